//! PostgreSQL continuous protection against a real PostgreSQL 15: base backups, the WAL
//! archive (`archive_command = lifeboat wal push`), point-in-time recovery that lands exactly
//! between two commits, restores that prove themselves, retention, and the bad inputs.

mod common;
use common::pg::Pg;
use common::*;

fn json_of(r: &Run) -> serde_json::Value {
    r.json()
}

/// Insert a row and return its commit's timestamp as the server saw it.
fn insert(pg: &Pg, v: &str) -> String {
    pg.sql(&format!(
        "INSERT INTO t(v) VALUES ('{v}') RETURNING to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
    ))
}

/// The archived segments of service db, in order.
fn archived_segments(pg: &Pg) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(pg.lab.p("repo/lifeboat/wal/db"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    names
}

/// Flip one bit of an archived WAL object in storage.
fn damage_archived(pg: &Pg, name: &str) {
    let path = pg.lab.p("repo/lifeboat/wal/db").join(name);
    let mut obj = std::fs::read(&path).unwrap();
    let len = obj.len();
    obj[len - 20] ^= 0x01;
    std::fs::write(&path, obj).unwrap();
}

/// `lifeboat serve` for the lab's plan (its log in `log`), once it takes WAL handoffs.
fn serve_handoffs(pg: &Pg, log: &str) -> Daemon {
    let sock = pg.lab.p(".lifeboat/wal.sock");
    let log = std::fs::File::create(pg.lab.p(log)).unwrap();
    let d = Daemon(pg.cmd(&["serve"]).stderr(log).spawn().unwrap());
    for _ in 0..400 {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return d;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the daemon did not listen for WAL handoffs");
}

/// `wal push` of a file named like the local segment `seg` whose content differs by one byte.
fn push_conflicting(pg: &Pg, seg: &str) -> Run {
    let mut other = std::fs::read(pg.lab.p(&format!("pgdata/pg_wal/{seg}"))).unwrap();
    let n = other.len();
    other[n - 10] ^= 0xFF;
    let fake = pg.lab.p(seg);
    std::fs::write(&fake, &other).unwrap();
    pg.chown();
    pg.run(&["wal", "push", "db", fake.to_str().unwrap()])
}

/// `lifeboat restore db TARGET… --target DIR --start PORT` on a free port, which is returned
/// once the restored server accepts writes.
fn restored(pg: &Pg, to: &[&str], dir: &str) -> u16 {
    let port = free_port();
    let port_arg = port.to_string();
    let mut args = vec!["restore", "db"];
    args.extend_from_slice(to);
    args.extend(["--target", dir, "--start", &port_arg]);
    pg.ok(&args);
    port
}

fn rows(pg: &Pg, port: u16) -> Vec<String> {
    pg.sql_on(port, "postgres", "SELECT v FROM t ORDER BY id")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn pitr_lands_between_two_commits_and_the_window_is_reported() {
    let pg = Pg::start("", &["SELECT count(*) > 0 FROM t"]);
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    insert(&pg, "before-backup");
    let first = json_of(&pg.ok(&["--json", "backup", "db-base"]));
    assert!(first[0]["files"].as_u64().unwrap() > 500, "{first}");
    // The server runs on this host: its data directory is read in place.
    let via = first[0]["via"].as_str().unwrap_or_default();
    assert!(via.starts_with("read the data directory"), "{first}");

    insert(&pg, "a");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let b_at = insert(&pg, "b");
    let b_lsn = pg.sql("SELECT pg_current_wal_insert_lsn()");
    std::thread::sleep(std::time::Duration::from_millis(300));
    insert(&pg, "c");
    pg.sql("SELECT pg_create_restore_point('after-c')");
    insert(&pg, "d");
    pg.switch_wal();

    // The archive holds everything from the backup on, no gaps.
    let v = pg.ok(&["wal", "verify"]);
    assert!(v.stdout.contains("recoverable window: "), "{}", v.stdout);
    assert!(v.stdout.contains("  ok"), "{}", v.stdout);
    let vj = json_of(&pg.ok(&["--json", "wal", "verify", "db"]));
    assert_eq!(vj[0]["gaps"].as_array().unwrap().len(), 0);
    assert!(vj[0]["segments"].as_u64().unwrap() >= 2);

    // 150 ms after b committed, well before c.
    let b_micros: String = pg.sql(&format!(
        "SELECT to_char(('{b_at}'::timestamptz + interval '150 ms') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
    ));
    let port = free_port();
    let r = pg.ok(&[
        "--json",
        "restore",
        "db",
        "--to",
        &b_micros,
        "--target",
        "r1",
        "--start",
        &port.to_string(),
    ]);
    let rep = json_of(&r);
    assert_eq!(rep["started"], true);
    assert_eq!(rows(&pg, port), vec!["before-backup", "a", "b"]);
    // The restored server accepts writes, and says where it stopped.
    pg.sql_on(
        port,
        "postgres",
        "INSERT INTO t(v) VALUES ('written-after-restore')",
    );
    let stop = rep["reached"]["stop_line"].as_str().unwrap_or_default();
    assert!(stop.contains("recovery stopping before commit"), "{rep}");
    pg.stop_dir("r1");

    // A restore point, and --latest.
    let port2 = restored(&pg, &["--to-name", "after-c"], "r2");
    assert_eq!(rows(&pg, port2), vec!["before-backup", "a", "b", "c"]);
    pg.stop_dir("r2");
    // A WAL location: everything up to b's commit.
    let r = pg.ok(&[
        "restore",
        "db",
        "--to-lsn",
        &b_lsn,
        "--target",
        "r2",
        "--force",
        "--start",
        &port2.to_string(),
    ]);
    assert!(
        r.stdout.contains("recovery stopping after WAL location"),
        "{}",
        r.stdout
    );
    assert_eq!(rows(&pg, port2), vec!["before-backup", "a", "b"]);
    pg.stop_dir("r2");
    let r = pg.run(&["restore", "db", "--to-lsn", "FF/0", "--target", "r9"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("beyond what the archive can replay"),
        "{}",
        r.stderr
    );
    let port3 = free_port();
    let r = pg.ok(&[
        "restore",
        "db",
        "--latest",
        "--target",
        "r3",
        "--start",
        &port3.to_string(),
    ]);
    assert!(r.stdout.contains("accepts writes"), "{}", r.stdout);
    assert_eq!(rows(&pg, port3), vec!["before-backup", "a", "b", "c", "d"]);
    pg.stop_dir("r3");

    // A non-empty target is refused, nothing touched; --force replaces it.
    let r = pg.run(&["restore", "db", "--latest", "--target", "r3"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("is not empty"), "{}", r.stderr);
    assert!(pg.lab.p("r3/PG_VERSION").exists());
    pg.ok(&["restore", "db", "--latest", "--target", "r3", "--force"]);
    assert!(pg.lab.p("r3/recovery.signal").exists());
    let auto = std::fs::read_to_string(pg.lab.p("r3/postgresql.auto.conf")).unwrap();
    assert!(auto.contains("wal fetch"), "{auto}");
    assert!(auto.contains("archive_mode = 'off'"), "{auto}");

    // A target before the oldest backup is refused, with the window.
    let r = pg.run(&[
        "restore",
        "db",
        "--to",
        "2020-01-01 00:00:00+00",
        "--target",
        "r9",
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("before the oldest base backup"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("recoverable window"), "{}", r.stderr);
    assert!(!pg.lab.p("r9").exists());
    // A target after the last archived commit is refused with the reachable maximum.
    let r = pg.run(&[
        "restore",
        "db",
        "--to",
        "2099-01-01 00:00:00+00",
        "--target",
        "r9",
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("the last transaction it reaches was at"),
        "{}",
        r.stderr
    );

    // The second base backup stores only what changed.
    let second = json_of(&pg.ok(&["--json", "backup", "db-base"]));
    let s1 = first[0]["bytes_stored"].as_u64().unwrap();
    let s2 = second[0]["bytes_stored"].as_u64().unwrap();
    assert!(
        s2 * 2 < s1,
        "second base backup stored {s2} bytes, the first {s1}"
    );
    // Files untouched since the first backup began are taken from it unread.
    assert!(
        second[0]["files_unchanged"].as_u64().unwrap() > 100,
        "{second}"
    );
    assert!(
        second[0]["via"]
            .as_str()
            .unwrap_or_default()
            .contains("files unchanged since base backup"),
        "{second}"
    );
    let snaps = json_of(&pg.ok(&["--json", "snapshots"]));
    let tags: Vec<String> = snaps[1]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    for k in [
        "pg.start_lsn=",
        "pg.stop_lsn=",
        "pg.timeline=1",
        "pg.stop_time=",
        "pg.system_id=",
        "pg.via=files",
    ] {
        assert!(
            tags.iter().any(|t| t.starts_with(k)),
            "{k} missing in {tags:?}"
        );
    }

    // Every restore is in the evidence log.
    let ev = pg.events();
    assert!(
        ev.iter()
            .filter(|e| e["command"] == "restore" && e["outcome"] == "ok")
            .count()
            >= 3
    );
    assert!(ev
        .iter()
        .any(|e| e["command"] == "restore" && e["outcome"] == "failed"));
}

#[test]
fn verify_restore_proves_the_backup_in_a_sandbox_and_cleans_up() {
    let pg = Pg::start("", &["SELECT count(*) = 2 FROM t", "SELECT true"]);
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    insert(&pg, "x");
    pg.ok(&["backup", "db-base"]);
    insert(&pg, "y");
    pg.switch_wal();
    let r = pg.ok(&["verify", "--restore", "db"]);
    assert!(r.stdout.contains("ok    db: restore of"), "{}", r.stdout);
    assert!(r.stdout.contains("RTO objective 900.0s"), "{}", r.stdout);
    let ev = pg.events();
    let last = ev.last().unwrap();
    assert_eq!(last["command"], "verify restore");
    assert_eq!(last["outcome"], "ok");
    assert!(last["figures"]["restore_ms"].as_u64().unwrap() > 0);
    assert!(last["figures"]["data_age_ms"].is_u64(), "{last}");
    assert_eq!(last["figures"]["checks"].as_array().unwrap().len(), 2);
    // Nothing left behind.
    let sandbox = pg.lab.p(".lifeboat/sandbox");
    assert_eq!(std::fs::read_dir(&sandbox).unwrap().count(), 0);

    // A check that fails makes the verification fail (the WAL with y is replayed: count is 2;
    // a third row that is never archived must not be seen).
    insert(&pg, "z-not-archived");
    let mut plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml")).unwrap();
    plan = plan.replace("SELECT true", "SELECT count(*) = 3 FROM t");
    std::fs::write(pg.lab.p("lifeboat.yaml"), plan).unwrap();
    pg.chown();
    let r = pg.run(&["verify", "--restore", "db"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout.contains("FAIL SELECT count(*) = 3 FROM t"),
        "{}",
        r.stdout
    );
    assert_eq!(std::fs::read_dir(&sandbox).unwrap().count(), 0);
}

#[test]
fn archive_is_idempotent_refuses_conflicts_and_names_gaps() {
    let pg = Pg::start("", &[]);
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    pg.ok(&["backup", "db-base"]);
    for i in 0..4 {
        insert(&pg, &format!("r{i}"));
        pg.switch_wal();
    }
    let wal_dir = pg.lab.p("repo/lifeboat/wal/db");
    let names = archived_segments(&pg);
    assert!(names.len() >= 5, "{names:?}");

    // archive_command retried with the same segment: success, nothing rewritten.
    let seg = names[names.len() - 1].clone();
    let local = pg.lab.p(&format!("pgdata/pg_wal/{seg}"));
    let stored_before = std::fs::read(wal_dir.join(&seg)).unwrap();
    let r = pg.ok(&["--json", "wal", "push", "db", local.to_str().unwrap()]);
    assert_eq!(json_of(&r)["outcome"], "already archived");
    assert_eq!(std::fs::read(wal_dir.join(&seg)).unwrap(), stored_before);

    // The same name with other content: refused, the stored one kept, recorded.
    let r = push_conflicting(&pg, &seg);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("already archived with different content"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(wal_dir.join(&seg)).unwrap(), stored_before);
    assert!(pg
        .events()
        .iter()
        .any(|e| e["command"] == "wal push" && e["outcome"] == "conflict"));

    // fetch gives back exactly the original bytes; a name not archived is exit 1.
    let r = pg.run(&["wal", "fetch", "db", &seg, "fetched", "--prefetch", "2"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        std::fs::read(pg.lab.p("fetched")).unwrap(),
        std::fs::read(&local).unwrap()
    );
    let r = pg.run(&["wal", "fetch", "db", "0000000100000000000000F0", "nothere"]);
    assert_eq!(r.code, 1, "{}", r.all());

    // A segment missing in the middle: verify names it, recovery past it is refused.
    let last_commit = pg.sql(
        "SELECT to_char(max(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' FROM t",
    );
    let hole = names[names.len() - 3].clone();
    std::fs::remove_file(wal_dir.join(&hole)).unwrap();
    let r = pg.run(&["wal", "verify", "db"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout
            .contains(&format!("1 segment(s) missing: {hole}..{hole}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains(&format!("replay stops at missing segment {hole}")),
        "{}",
        r.stdout
    );
    let r = pg.run(&["restore", "db", "--to", &last_commit, "--target", "r1"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains(&format!("cannot pass missing segment {hole}")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("the last transaction it reaches was at"),
        "{}",
        r.stderr
    );

    // A WAL object damaged in storage is detected on fetch (exit 126: recovery must stop).
    let victim = names[names.len() - 1].clone();
    damage_archived(&pg, &victim);
    let r = pg.run(&["wal", "fetch", "db", &victim, "damaged", "--prefetch", "0"]);
    assert_eq!(r.code, 126, "{}", r.all());
    assert!(r.stderr.contains("unreadable"), "{}", r.stderr);
    assert!(!pg.lab.p("damaged").exists());
}

#[test]
fn wal_fetch_without_the_key_fails_loudly() {
    let pg = Pg::start("", &[]);
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    insert(&pg, "x");
    pg.switch_wal();
    let name = pg.sql("SELECT last_archived_wal FROM pg_stat_archiver");
    // Neither the key file nor a cached WAL key.
    std::fs::remove_file(pg.lab.p("test.key")).unwrap();
    let _ = std::fs::remove_dir_all(pg.lab.p(".lifeboat/keys"));
    let r = pg.run(&["wal", "fetch", "db", &name, "out", "--prefetch", "0"]);
    assert_eq!(r.code, 126, "{}", r.all());
    assert!(r.stderr.contains("cannot read key file"), "{}", r.stderr);
    assert!(!pg.lab.p("out").exists());
    // A standby's restore_command reports it and falls back to streaming (exit 1).
    let r = pg.run(&["wal", "fetch", "db", &name, "out", "--standby"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("cannot read key file"), "{}", r.stderr);
}

#[test]
fn bad_credentials_and_unreachable_servers_record_nothing() {
    let pg = Pg::start("", &[]);
    pg.sql("ALTER USER postgres PASSWORD 'right-password'");
    let hba = pg.lab.p("pgdata/pg_hba.conf");
    std::fs::write(
        &hba,
        "host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    pg.chown();
    pg.pg_ctl(&["reload"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml")).unwrap();
    let with_pw = plan.replace(
        "user: postgres, data_dir",
        "user: postgres, password: wrong-password, data_dir",
    );
    std::fs::write(pg.lab.p("lifeboat.yaml"), &with_pw).unwrap();
    pg.chown();
    let r = pg.run(&["backup", "db-base"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all().contains("password authentication failed"),
        "{}",
        r.all()
    );
    assert!(
        !r.all().contains("wrong-password"),
        "secret leaked: {}",
        r.all()
    );
    assert_eq!(
        json_of(&pg.ok(&["--json", "snapshots"]))
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // The right password (from the environment) works.
    std::fs::write(
        pg.lab.p("lifeboat.yaml"),
        plan.replace(
            "user: postgres, data_dir",
            "user: postgres, password: \"${PGTEST_PW}\", data_dir",
        ),
    )
    .unwrap();
    pg.chown();
    let r: Run = pg
        .cmd(&["backup", "db-base"])
        .env("PGTEST_PW", "right-password")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{}", r.all());

    // Unreachable: nothing listens on the port.
    let dead = free_port();
    std::fs::write(
        pg.lab.p("lifeboat.yaml"),
        plan.replace(&format!("port: {}", pg.port), &format!("port: {dead}")),
    )
    .unwrap();
    pg.chown();
    let r = pg.run(&["backup", "db-base"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.all().contains("no reachable primary"), "{}", r.all());
    assert!(r.all().contains("cannot connect"), "{}", r.all());
    assert_eq!(
        json_of(&pg.ok(&["--json", "snapshots"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn corrupted_base_backup_is_never_restored_silently() {
    let pg = Pg::start("", &["SELECT true"]);
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    pg.sql("INSERT INTO t(v) SELECT md5(i::text) FROM generate_series(1, 20000) i");
    pg.ok(&["backup", "db-base"]);
    pg.switch_wal();
    flip_largest_pack(&pg.lab.p("repo"));
    let r = pg.run(&["restore", "db", "--latest", "--target", "r1"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        !pg.lab.p("r1/recovery.signal").exists(),
        "a damaged restore was configured to start"
    );
    let r = pg.run(&["verify", "--restore", "db"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("FAIL  db"), "{}", r.stdout);
}

#[test]
fn forget_drops_wal_only_no_retained_backup_needs_and_dumps_restore() {
    let pg = Pg::start("  db-dump: { service: db, method: dump }\n", &[]);
    std::fs::write(
        pg.lab.p("lifeboat.yaml"),
        std::fs::read_to_string(pg.lab.p("lifeboat.yaml"))
            .unwrap()
            .replace(
                "db-base: { service: db }",
                "db-base: { service: db, retention: { last: 1 } }",
            ),
    )
    .unwrap();
    pg.chown();
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    pg.sql_on(
        pg.port,
        "app",
        "CREATE TABLE orders(id int); INSERT INTO orders VALUES (1), (2)",
    );
    pg.ok(&["backup", "db-base"]);
    for i in 0..3 {
        insert(&pg, &format!("r{i}"));
        pg.switch_wal();
    }
    pg.ok(&["backup", "db-base"]);
    insert(&pg, "after-second");
    pg.switch_wal();
    let snaps = json_of(&pg.ok(&["--json", "snapshots"]));
    let second_start = snaps[1]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|t| {
            t.as_str()
                .unwrap()
                .strip_prefix("pg.start_lsn=")
                .map(str::to_string)
        })
        .unwrap();
    let dry = pg.ok(&["forget", "--dry-run"]);
    assert!(dry.stdout.contains("would remove"), "{}", dry.stdout);
    assert!(dry.stdout.contains("WAL file(s) of db"), "{}", dry.stdout);
    let r = pg.ok(&["--json", "forget"]);
    let removed = json_of(&r)[0]["wal_removed"]["db"]
        .as_array()
        .unwrap()
        .len();
    assert!(removed >= 3, "{}", r.stdout);
    // What remains starts at the retained backup's segment; recovery from it still works.
    let seg_of = |lsn: &str| {
        let (hi, lo) = lsn.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32 | u64::from_str_radix(lo, 16).unwrap()) >> 24
    };
    let keep_from = seg_of(&second_start);
    for e in std::fs::read_dir(pg.lab.p("repo/lifeboat/wal/db")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        if n.len() == 24 {
            let segno = u64::from_str_radix(&n[8..16], 16).unwrap() * 256
                + u64::from_str_radix(&n[16..24], 16).unwrap();
            assert!(segno >= keep_from, "{n} should have been removed");
        }
    }
    let v = pg.ok(&["wal", "verify", "db"]);
    assert!(v.stdout.contains("  ok"), "{}", v.stdout);
    let port = restored(&pg, &["--latest"], "r1");
    assert_eq!(rows(&pg, port).last().unwrap(), "after-second");
    pg.stop_dir("r1");

    // Logical dumps: their own snapshot kind, restorable with pg_restore.
    pg.ok(&["backup", "db-dump"]);
    let snaps = json_of(&pg.ok(&["--json", "snapshots"]));
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "dump" && s["job"] == "db-dump"),
        "{snaps}"
    );
    pg.ok(&["restore", "latest", "--job", "db-dump", "--target", "dumps"]);
    let dump = pg.lab.p("dumps/dumps/app.dump");
    assert!(dump.exists(), "no app.dump");
    pg.chown();
    let o = pg.tool("pg_restore", &["--list", dump.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("orders"));
}

#[test]
fn wal_archive_and_pitr_on_s3() {
    let m = common::moto::moto();
    let repo = format!(
        "{{ url: \"s3://lifeboat-test/pg?endpoint=http://127.0.0.1:{}&region=us-east-1\", key_file: test.key, access_key_id: testing, secret_access_key: testing }}",
        m.port
    );
    let pg = Pg::start_with(&repo, "", &["SELECT count(*) = 2 FROM t"]);
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    insert(&pg, "one");
    pg.ok(&["backup", "db-base"]);
    insert(&pg, "two");
    pg.switch_wal();
    let v = json_of(&pg.ok(&["--json", "wal", "verify", "db"]));
    assert_eq!(v[0]["ok"], true, "{v}");
    assert!(!pg.lab.p("repo").exists());
    let port = restored(&pg, &["--latest"], "r1");
    assert_eq!(rows(&pg, port), vec!["one", "two"]);
    pg.stop_dir("r1");
    pg.ok(&["verify", "--restore", "db"]);
}

/// After a failover the archive holds two timelines: recovery from a base backup taken on
/// timeline 1 follows the history file onto timeline 2 (what `wal verify` and the window
/// computation must get right).
#[test]
fn recovery_follows_the_timeline_of_a_promoted_standby() {
    let pg = Pg::start("", &[]);
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    insert(&pg, "on-old-primary");
    pg.ok(&["backup", "db-base"]);
    pg.switch_wal();
    // A streaming standby built from the backup, archiving once promoted.
    pg.ok(&["restore", "db", "--latest", "--target", "standby"]);
    let sport = free_port();
    std::fs::remove_file(pg.lab.p("standby/recovery.signal")).unwrap();
    std::fs::write(pg.lab.p("standby/standby.signal"), "").unwrap();
    pg.append_conf(
        "standby/postgresql.auto.conf",
        &format!(
            "port = {sport}\narchive_mode = 'on'\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres'\n",
            pg.port
        ),
    );
    let o = pg.tool(
        "pg_ctl",
        &["-D", "standby", "-l", "standby.log", "-w", "start"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    insert(&pg, "replicated");
    let mut caught_up = false;
    for _ in 0..200 {
        if pg.sql_on(sport, "postgres", "SELECT count(*) FROM t") == "2" {
            caught_up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(caught_up, "standby did not catch up");
    // A base backup taken from the standby (`from: b`) spares the primary.
    let plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml")).unwrap();
    let plan = plan
        .replace("sites: [a]", "sites: [a, b]")
        .replace(
            "data_dir: pgdata }",
            &format!("data_dir: pgdata }}\n      b: {{ host: 127.0.0.1, port: {sport}, user: postgres, data_dir: standby }}"),
        )
        .replace("db-base: { service: db }", "db-base: { service: db }\n  db-standby: { service: db, from: b }");
    std::fs::write(pg.lab.p("lifeboat.yaml"), plan).unwrap();
    pg.chown();
    pg.ok(&["plan", "check"]);
    pg.ok(&["backup", "db-standby"]);
    let snaps = json_of(&pg.ok(&["--json", "snapshots"]));
    let tags = snaps[1]["tags"].to_string();
    assert!(tags.contains("pg.member=b"), "{tags}");
    // The primary dies; the standby is promoted onto timeline 2 and takes writes.
    pg.pg_ctl(&["stop", "-m", "immediate"]);
    let o = pg.tool("pg_ctl", &["-D", "standby", "promote", "-w"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    pg.sql_on(
        sport,
        "postgres",
        "INSERT INTO t(v) VALUES ('on-new-primary')",
    );
    pg.switch_wal_on(sport);

    let v = json_of(&pg.ok(&["--json", "wal", "verify", "db"]));
    let tls: Vec<u64> = v[0]["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert!(tls.contains(&1) && tls.contains(&2), "{v}");
    assert_eq!(v[0]["ok"], true, "{v}");
    assert!(pg.lab.p("repo/lifeboat/wal/db/00000002.history").exists());
    for b in v[0]["backups"].as_array().unwrap() {
        let reach = &b["reach"];
        assert!(
            reach["last_segment"]
                .as_str()
                .unwrap()
                .starts_with("00000002"),
            "{reach}"
        );
        assert!(reach["first_missing"].is_null(), "{reach}");
    }
    // From the timeline-1 base backup to the newest commit on timeline 2.
    let port = restored(&pg, &["--latest"], "r1");
    assert_eq!(
        rows(&pg, port),
        vec!["on-old-primary", "replicated", "on-new-primary"]
    );
    pg.stop_dir("r1");
}

/// Ctrl-C in the middle of `verify --restore`: the sandbox server is stopped and its directory
/// removed before lifeboat exits (130).
#[test]
fn interrupted_sandbox_is_torn_down() {
    let pg = Pg::start("", &["SELECT true"]);
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    pg.sql("INSERT INTO t(v) SELECT repeat(md5(i::text), 8) FROM generate_series(1, 200000) i");
    pg.ok(&["backup", "db-base"]);
    pg.switch_wal();
    let sandbox = pg.lab.p(".lifeboat/sandbox");
    let mut child = pg.cmd(&["verify", "--restore", "db"]).spawn().unwrap();
    // Wait until the restore has started writing the sandbox.
    let mut seen = false;
    // Up to 60 s: a loaded machine (CI runs tests in parallel) may be slow to get there.
    for _ in 0..12000 {
        if std::fs::read_dir(&sandbox)
            .map(|rd| rd.flatten().any(|e| e.path().join("base").exists()))
            .unwrap_or(false)
        {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(seen, "the sandbox never appeared");
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert_eq!(
        std::fs::read_dir(&sandbox).unwrap().count(),
        0,
        "sandbox left behind"
    );
    // No server from the sandbox is left running.
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(!ps.contains(sandbox.to_str().unwrap()), "{ps}");
}

/// Restoring as root for a server that runs as `postgres`: if `postgres` cannot read the
/// repository key, restore_command would fail mid-recovery — it is caught before the start.
#[test]
fn restore_as_root_checks_the_server_user_can_fetch_wal() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let pg = Pg::start("", &[]);
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    pg.ok(&["backup", "db-base"]);
    pg.switch_wal();
    // The key readable by root only, and no cached WAL key.
    let key = pg.lab.p("test.key");
    std::os::unix::fs::chown(&key, Some(0), Some(0)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _ = std::fs::remove_dir_all(pg.lab.p(".lifeboat/keys"));
    let port = free_port();
    let r: Run = std::process::Command::new(&pg.lb)
        .args([
            "restore",
            "db",
            "--latest",
            "--target",
            "r1",
            "--start",
            &port.to_string(),
        ])
        .current_dir(pg.lab.path())
        .env("LIFEBOAT_PROGRESS", "0")
        .env_remove("LIFEBOAT_STATE_DIR")
        .env_remove("LIFEBOAT_PLAN")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("restore_command would fail for the data directory's owner"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("cannot read key file"), "{}", r.stderr);
    assert!(!pg.lab.p("r1/postmaster.pid").exists());
}

/// `status` probes members with one deadline and tells a refused connection (down) from a
/// hung server (SIGSTOP: connections are accepted by the kernel, nothing answers).
#[test]
fn status_tells_a_down_server_from_a_hung_one() {
    let pg = Pg::start("", &[]);
    let s = json_of(&pg.ok(&["--json", "status"]));
    let m = &s[0]["members"][0];
    assert_eq!(m["probe"]["ok"], true, "{s}");
    assert_eq!(m["probe"]["role"], "primary", "{s}");
    assert_eq!(s[0]["decision"]["action"], "stay", "{s}");

    let pid = pg.postmaster_pid("pgdata");
    // SAFETY: signals to the test's own postmaster.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let r = pg.run(&["--json", "status", "--timeout-ms", "400"]);
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let s = json_of(&r);
    assert_eq!(s[0]["members"][0]["probe"]["failure"], "timeout", "{s}");

    pg.pg_ctl(&["stop", "-m", "fast"]);
    let s = json_of(&pg.ok(&["--json", "status"]));
    assert_eq!(s[0]["members"][0]["probe"]["failure"], "refused", "{s}");
    assert_eq!(s[0]["decision"]["action"], "hold", "{s}");
}

/// A WAL object damaged in storage, in the segment after the one a target lies in. PostgreSQL
/// reads ahead of what it replays and asked for it: the restore died (exit 126) although the
/// target never needed it. Now a target before the damage is restored; a target that needs the
/// damaged segment, or the latest point, still fails, naming it. `wal verify` read only names
/// and cached metadata and reported the full window; `--read-data` finds the damage and the
/// window it cuts.
#[test]
fn damaged_wal_after_the_target_does_not_break_the_restore_and_read_data_finds_it() {
    let pg = Pg::start("", &[]);
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    pg.ok(&["backup", "db-base"]);
    let a_at = insert(&pg, "a");
    std::thread::sleep(std::time::Duration::from_millis(300));
    insert(&pg, "b");
    let seg_a = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.switch_wal();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let c_at = insert(&pg, "c");
    pg.switch_wal();
    std::thread::sleep(std::time::Duration::from_millis(300));
    insert(&pg, "d");
    pg.switch_wal();
    // The segment after a's and b's: damaged in storage.
    let names = archived_segments(&pg);
    let victim = names
        .iter()
        .find(|n| n.as_str() > seg_a.as_str())
        .unwrap_or_else(|| panic!("{seg_a} {names:?}"))
        .clone();
    damage_archived(&pg, &victim);

    // Names and metadata alone see nothing wrong; reading the data back does.
    pg.ok(&["wal", "verify", "db"]);
    let r = pg.run(&["wal", "verify", "db", "--read-data"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout
            .contains(&format!("replay stops at damaged segment {victim}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains(&format!("FAIL  {victim}: archived WAL file")),
        "{}",
        r.stdout
    );
    let v = json_of(&pg.run(&["--json", "wal", "verify", "db", "--read-data"]));
    assert_eq!(v[0]["damaged"][0]["name"], victim.as_str(), "{v}");
    let window_end = v[0]["window"][1].as_i64().unwrap();
    let c_micros: i64 = pg
        .sql(&format!(
            "SELECT (extract(epoch FROM '{c_at}'::timestamptz) * 1000000)::bigint"
        ))
        .parse()
        .unwrap();
    assert!(window_end < c_micros, "the window must end before c: {v}");

    // Between a and b: the target lies before the damage, and is restored.
    let target: String = pg.sql(&format!(
        "SELECT to_char(('{a_at}'::timestamptz + interval '150 ms') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
    ));
    let port = restored(&pg, &["--to", &target], "r1");
    assert_eq!(rows(&pg, port), vec!["a"]);
    pg.stop_dir("r1");

    // After c: it needs the damaged segment. Refused, naming it.
    let after_c: String = pg.sql(&format!(
        "SELECT to_char(('{c_at}'::timestamptz + interval '150 ms') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
    ));
    let r = pg.run(&[
        "restore",
        "db",
        "--to",
        &after_c,
        "--target",
        "r2",
        "--start",
        &free_port().to_string(),
    ]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("needs WAL that is damaged") && r.stderr.contains(&victim),
        "{}",
        r.stderr
    );
    // The latest point also needs it: refused (recovery stops on the damaged segment).
    let r = pg.run(&[
        "restore",
        "db",
        "--latest",
        "--target",
        "r3",
        "--start",
        &free_port().to_string(),
    ]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.all().contains("126")
            || r.all().contains("unreadable")
            || r.all().contains("stopped during recovery"),
        "{}",
        r.all()
    );
}

/// A frozen server (SIGSTOP: the kernel still accepts connections, nothing answers): a base
/// backup ends with an error that says so, within its deadline, and records no snapshot.
#[test]
fn a_frozen_server_ends_a_backup_with_an_error_not_a_hang() {
    let pg = Pg::start("", &[]);
    let pid = pg.postmaster_pid("pgdata");
    // SAFETY: signals to the test's own postmaster.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let out = run_bounded(pg.cmd(&["backup", "db-base"]), 60);
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let out = out.expect("the backup hangs on a frozen server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no answer within"), "{stderr}");
    assert_eq!(pg.lab.snapshot_count("main"), 0);
}

/// A server that stops answering in the middle of a base backup (its checkpointer frozen, so
/// the backup's fast checkpoint never completes while connections still work): pg_basebackup
/// would wait forever; the job's `stall_timeout` stops it and the backup fails, no snapshot.
#[test]
fn a_base_backup_that_stalls_is_stopped_and_fails() {
    let pg = Pg::start("  stalled: { service: db, stall_timeout: 2s }\n", &[]);
    let ckpt: i32 = pg
        .sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
        .parse()
        .unwrap();
    // SAFETY: signals to the test's own checkpointer.
    unsafe { libc::kill(ckpt, libc::SIGSTOP) };
    let out = run_bounded(pg.cmd(&["backup", "stalled"]), 60);
    unsafe { libc::kill(ckpt, libc::SIGCONT) };
    let out = out.expect("the backup waits forever on a stalled server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    // Read in place, the start checkpoint is what stalls; streamed, pg_basebackup's output.
    assert!(
        stderr.contains("made no progress for 2 s") || stderr.contains("wrote nothing for 2 s"),
        "{stderr}"
    );
    assert_eq!(pg.lab.snapshot_count("main"), 0);
    // The server is fine again: the next run succeeds.
    pg.ok(&["backup", "stalled"]);
}

/// `archive_command` hands its segments to a running daemon, which archives them durably
/// before answering; the daemon killed (its socket left behind), frozen, or restarted never
/// costs a segment: the command then archives by itself, and the archive has no gap.
#[test]
fn wal_push_goes_through_a_running_daemon_and_never_depends_on_it() {
    let pg = Pg::start("", &[]);
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    pg.ok(&["backup", "db-base"]);
    let sock = pg.lab.p(".lifeboat/wal.sock");
    let serve = |n: u32| serve_handoffs(&pg, &format!("serve-{n}.log"));
    let handoffs = |n: u32| -> Vec<serde_json::Value> {
        std::fs::read_to_string(pg.lab.p(&format!("serve-{n}.log")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "wal handoff")
            .collect()
    };
    let last_archived = || pg.sql("SELECT last_archived_wal FROM pg_stat_archiver");
    let push = |name: &str| {
        let local = pg.lab.p(&format!("pgdata/pg_wal/{name}"));
        pg.run(&["--json", "wal", "push", "db", local.to_str().unwrap()])
    };

    // Through the daemon: PostgreSQL's own archiver, then a retry by hand.
    let mut d = serve(1);
    for i in 0..3 {
        insert(&pg, &format!("daemon {i}"));
        pg.switch_wal();
    }
    let stored: Vec<_> = handoffs(1)
        .into_iter()
        .filter(|h| h["outcome"] == "stored" && h["answered"] == true)
        .collect();
    assert!(stored.len() >= 3, "{stored:?}");
    let seg = last_archived();
    assert!(
        stored.iter().any(|h| h["file"] == seg.as_str()),
        "{stored:?}"
    );
    let r = push(&seg);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(json_of(&r)["via"], "daemon");
    assert_eq!(json_of(&r)["outcome"], "already archived");

    // The daemon refuses what the process would refuse, with the same words, and records it.
    let r = push_conflicting(&pg, &seg);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("already archived with different content")
            && !r.stderr.contains("without the daemon"),
        "{}",
        r.stderr
    );
    assert!(handoffs(1).iter().any(|h| h["outcome"] == "refused"));
    assert!(pg
        .events()
        .iter()
        .any(|e| e["command"] == "wal push" && e["outcome"] == "conflict"));

    // Killed: its socket stays behind, nobody answers, the command archives by itself.
    d.kill_now();
    assert!(sock.exists());
    insert(&pg, "daemon killed");
    pg.switch_wal();
    let r = push(&last_archived());
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(json_of(&r)["via"], "process");

    // Restarted: it takes over the socket and the segments again.
    let d2 = serve(2);
    insert(&pg, "daemon back");
    pg.switch_wal();
    assert!(handoffs(2)
        .iter()
        .any(|h| h["file"] == last_archived().as_str() && h["outcome"] == "stored"));

    // Frozen: it does not take the request within its time, the command archives by itself
    // and says so in PostgreSQL's log.
    let pid = d2.0.id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    insert(&pg, "daemon frozen");
    pg.switch_wal();
    let frozen_seg = last_archived();
    let r = push(&frozen_seg);
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(json_of(&r)["via"], "process");
    assert!(
        r.stderr.contains("archiving without the daemon"),
        "{}",
        r.stderr
    );
    // Awake again, it answers the next one.
    insert(&pg, "daemon awake");
    pg.switch_wal();
    assert_eq!(json_of(&push(&last_archived()))["via"], "daemon");

    // Nothing went missing on the way: every segment since the base backup is there.
    let r = pg.run(&["wal", "verify", "db"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(archived_segments(&pg).contains(&frozen_seg));
    drop(d2);
}

/// The archive's disk full while the daemon takes a segment: the push fails with the reason
/// (PostgreSQL keeps the segment and tries again), nothing half-written is left in the archive,
/// and once there is room the segment is archived and the archive has no gap.
#[test]
fn a_full_disk_under_the_daemon_fails_the_push_and_loses_nothing() {
    let disk = tempfile::tempdir().unwrap();
    let Some(_guard) = tmpfs(disk.path(), "96m") else {
        return;
    };
    let repo = disk.path().join("repo");
    let pg = Pg::start_with(
        &format!("{{ url: {}, key_file: test.key }}", repo.display()),
        "",
        &[],
    );
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    pg.ok(&["backup", "db-base"]);
    let _d = serve_handoffs(&pg, "serve.log");
    insert(&pg, "before");
    pg.switch_wal();

    // Fill the disk.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(disk.path().join("filler")).unwrap();
        let mb = vec![0u8; 1 << 20];
        while f.write_all(&mb).is_ok() {}
        let small = vec![0u8; 4096];
        while f.write_all(&small).is_ok() {}
    }
    insert(&pg, "disk full");
    let seg = pg.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let local = pg.lab.p(&format!("pgdata/pg_wal/{seg}"));
    let r = pg.run(&["wal", "push", "db", local.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("No space left on device") || r.stderr.contains("disk is full"),
        "{}",
        r.all()
    );
    assert!(!r.stderr.contains("without the daemon"), "{}", r.stderr);
    let wal_dir = repo.join("lifeboat/wal/db");
    let leftovers: Vec<String> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&seg))
        .collect();
    assert!(leftovers.is_empty(), "half-written: {leftovers:?}");

    // Room again: PostgreSQL's next try archives it (through the daemon), nothing is missing.
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    insert(&pg, "room again");
    pg.switch_wal();
    let names: Vec<String> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&seg), "{names:?}");
    let r = pg.run(&["wal", "verify", "db"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

/// `pg_dump` of database `db` on `port` as plain SQL (for comparing two clusters' data).
fn dump_sql(pg: &Pg, port: u16, db: &str) -> String {
    // Unlogged tables come back empty by design.
    let o = pg
        .client("pg_dump", port)
        .args(["-d", db, "--no-unlogged-table-data"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // pg_dump marks its output with a random key per run (`\restrict KEY`).
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first line where two dumps differ (with its number), if any.
fn first_difference(a: &str, b: &str) -> Option<(usize, String, String)> {
    let (mut x, mut y) = (a.lines(), b.lines());
    for i in 0.. {
        match (x.next(), y.next()) {
            (None, None) => return None,
            (l, r) if l != r => {
                return Some((
                    i + 1,
                    l.unwrap_or("<end>").into(),
                    r.unwrap_or("<end>").into(),
                ))
            }
            _ => {}
        }
    }
    None
}

#[test]
fn a_base_backup_read_in_place_while_pgbench_writes_restores_to_the_same_data() {
    let pg = Pg::start(
        "  db-stream: { service: db, via: stream }\n  db-files: { service: db, via: files }\n",
        &[],
    );
    let bench = pg
        .client("pgbench", pg.port)
        .args(["-i", "-q", "-s", "4", "postgres"])
        .output()
        .unwrap();
    assert!(
        bench.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&bench.stderr)
    );
    pg.sql("CREATE TABLE shrinks AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 40000) g");
    pg.sql("CREATE TABLE gone AS SELECT g AS id FROM generate_series(1, 10000) g");
    pg.sql("CREATE UNLOGGED TABLE scratch AS SELECT g AS id FROM generate_series(1, 5000) g");
    pg.sql("CHECKPOINT");

    // pgbench writes through the whole backup.
    let load = pg
        .client("pgbench", pg.port)
        .args(["-n", "-c", "2", "-T", "25", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Held right after pg_backup_start(): a relation shrinks and one is dropped under it.
    let pause = pg.lab.p("pauses");
    std::fs::create_dir_all(&pause).unwrap();
    pg.chown();
    let mut b = pg.cmd(&["--json", "backup", "db-base"]);
    b.env("LIFEBOAT_PAUSES", "base-backup-started")
        .env("LIFEBOAT_PAUSE_DIR", &pause)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let backup = b.spawn().unwrap();
    let reached = pause.join("base-backup-started.reached");
    for _ in 0..600 {
        if reached.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        reached.exists(),
        "the backup never reached pg_backup_start()"
    );
    let before = std::fs::metadata(
        pg.lab
            .p("pgdata")
            .join(pg.sql("SELECT pg_relation_filepath('shrinks')")),
    )
    .unwrap()
    .len();
    pg.sql("DELETE FROM shrinks WHERE id > 1000");
    // pgbench's open snapshots can keep the deleted rows a moment: vacuum until the file
    // is truncated.
    let size = || {
        std::fs::metadata(
            pg.lab
                .p("pgdata")
                .join(pg.sql("SELECT pg_relation_filepath('shrinks')")),
        )
        .unwrap()
        .len()
    };
    for _ in 0..50 {
        pg.sql("VACUUM shrinks");
        if size() < before / 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let after = size();
    assert!(
        after < before / 4,
        "the relation file did not shrink: {before} → {after}"
    );
    pg.sql("DROP TABLE gone");
    std::fs::write(pause.join("base-backup-started.go"), b"").unwrap();
    let out = backup.wait_with_output().unwrap();
    let r: Run = out.into();
    assert_eq!(r.code, 0, "{}", r.all());
    let j = r.json();
    assert!(
        j[0]["via"]
            .as_str()
            .unwrap()
            .starts_with("read the data directory"),
        "{j}"
    );

    let load = load.wait_with_output().unwrap();
    assert!(
        load.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&load.stderr)
    );
    pg.sql("SELECT pg_create_restore_point('bench-done')");
    let expected = dump_sql(&pg, pg.port, "postgres");
    pg.sql("INSERT INTO shrinks VALUES (-1, 'after the restore point')");
    pg.switch_wal();

    // The restore replays from the backup across the shrink, the drop and pgbench's writes.
    let rport = restored(&pg, &["--to-name", "bench-done"], "r1");
    let restored = dump_sql(&pg, rport, "postgres");
    assert_eq!(
        first_difference(&restored, &expected),
        None,
        "the restored data differs"
    );
    assert!(expected.contains("COPY public.pgbench_history"));
    assert_eq!(
        pg.sql_on(rport, "postgres", "SELECT count(*) FROM shrinks"),
        "1000"
    );
    assert_eq!(
        pg.sql_on(rport, "postgres", "SELECT to_regclass('gone') IS NULL"),
        "t"
    );
    // An unlogged table comes back empty (its init fork only), as after a crash.
    assert_eq!(
        pg.sql_on(rport, "postgres", "SELECT count(*) FROM scratch"),
        "0"
    );
    let check = pg
        .client("pg_amcheck", rport)
        .args(["--install-missing", "--heapallindexed", "-d", "postgres"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "pg_amcheck: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    pg.stop_dir("r1");

    // The same backup, without the WAL archive: the segments it needs are in it.
    let snap = j[0]["snapshot"].as_str().unwrap().to_string();
    let files = pg.ok(&["--json", "snapshots"]).json();
    let tags = files
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == snap)
        .map(|s| s["tags"].clone())
        .unwrap();
    let tag = |k: &str| {
        tags.as_array()
            .unwrap()
            .iter()
            .find_map(|t| t.as_str().unwrap().strip_prefix(k).map(str::to_string))
            .unwrap_or_else(|| panic!("{k} in {tags}"))
    };
    assert_eq!(tag("pg.via="), "files");
    let start: String = tag("pg.start_lsn=");
    let seg = pg.sql(&format!("SELECT pg_walfile_name('{start}')"));
    pg.ok(&["restore", &snap, "--target", "plain"]);
    assert!(pg.lab.p("plain/pgdata/backup_label").exists());
    assert!(
        pg.lab.p(&format!("plain/pgdata/pg_wal/{seg}")).exists(),
        "{seg} missing"
    );
    assert!(!pg.lab.p("plain/pgdata/postmaster.pid").exists());
    // Started as it is (crash recovery from its backup_label), it reaches consistency with
    // the WAL inside it alone: the backup's end, after the shrink and the drop.
    let plain = pg.lab.p("plain/pgdata");
    std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let pport = free_port();
    pg.append_conf(
        "plain/pgdata/postgresql.auto.conf",
        &format!("\nport = {pport}\narchive_mode = off\n"),
    );
    pg.pg_ctl_in(
        "plain/pgdata",
        &["start", "-w", "-t", "60", "-l", "plain.log"],
    );
    assert_eq!(
        pg.sql_on(pport, "postgres", "SELECT count(*) FROM shrinks"),
        "1000"
    );
    assert_eq!(
        pg.sql_on(pport, "postgres", "SELECT to_regclass('gone') IS NULL"),
        "t"
    );
    pg.stop_dir("plain/pgdata");

    // `via: stream` streams, and says so; `via: files` reads in place.
    let s = pg.ok(&["--json", "backup", "db-stream"]).json();
    assert_eq!(
        s[0]["via"], "streamed with pg_basebackup (the job says `via: stream`)",
        "{s}"
    );
    // `--full` reads every file again.
    let full = pg.ok(&["--json", "backup", "db-base", "--full"]).json();
    assert_eq!(full[0]["files_unchanged"], 0, "{full}");
    assert!(
        full[0]["via"].as_str().unwrap().contains("a full backup"),
        "{full}"
    );
    let f = pg.ok(&["--json", "backup", "db-files"]).json();
    assert!(
        f[0]["via"]
            .as_str()
            .unwrap()
            .starts_with("read the data directory"),
        "{f}"
    );
}

/// Insert a row and return its commit time in Unix microseconds (the server's clock).
fn insert_micros(pg: &Pg, v: &str) -> i64 {
    pg.sql(&format!(
        "INSERT INTO t(v) VALUES ('{v}') RETURNING (extract(epoch FROM at) * 1000000)::bigint"
    ))
    .parse()
    .unwrap()
}

/// Wait up to `secs` for `cond`.
fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// The end of the recoverable window `wal verify` reports (Unix microseconds).
fn window_end(pg: &Pg) -> i64 {
    let v = pg.run(&["--json", "wal", "verify", "db"]).json();
    v[0]["window"][1].as_i64().unwrap_or(0)
}

/// With `wal_stream`, the daemon receives WAL from a replication slot: a commit is in the
/// archive (and restored by `--latest`) well before its segment is complete; archive_command
/// then only confirms; a slot dropped behind the daemon's back is reported and made again, and
/// the archive has no gap.
#[test]
fn the_streaming_archive_holds_the_newest_commits_and_reports_a_dropped_slot() {
    let pg = Pg::start_full(
        "{ url: repo, key_file: test.key }",
        "    wal_stream: { interval: 200ms }\n",
        "",
        &[],
    );
    pg.sql(
        "CREATE TABLE t(id serial primary key, at timestamptz default clock_timestamp(), v text)",
    );
    pg.ok(&["backup", "db-base"]);
    pg.switch_wal();
    let _daemon = serve_handoffs(&pg, "serve.log");
    let log = || std::fs::read_to_string(pg.lab.p("serve.log")).unwrap_or_default();
    assert!(
        wait_until(30, || log().contains("\"action\":\"streaming\"")),
        "{}",
        log()
    );
    insert_micros(&pg, "streamed-1");
    let at = insert_micros(&pg, "streamed-2");
    // No segment switch: the commit reaches the archive through the stream alone.
    assert!(
        wait_until(20, || window_end(&pg) >= at),
        "the archive never held the commit: {}\n{}",
        pg.run(&["wal", "verify", "db"]).all(),
        log()
    );
    let v = pg.ok(&["wal", "verify", "db"]);
    assert!(v.stdout.contains("is being streamed"), "{}", v.stdout);
    let port = restored(&pg, &["--latest"], "r1");
    assert_eq!(rows(&pg, port), vec!["streamed-1", "streamed-2"]);
    pg.stop_dir("r1");

    // The completed segment: streamed and confirmed by archive_command, no gap.
    pg.switch_wal();
    assert!(
        wait_until(20, || log().contains("\"action\":\"archived\"")),
        "{}",
        log()
    );
    let vj = pg.ok(&["--json", "wal", "verify", "db"]).json();
    assert_eq!(vj[0]["gaps"].as_array().unwrap().len(), 0, "{vj}");

    // The slot dropped behind the daemon's back.
    assert!(
        wait_until(20, || {
            pg.sql(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'lifeboat_db' AND active_pid IS NOT NULL",
            );
            pg.try_sql_on(
                pg.port,
                "postgres",
                "SELECT pg_drop_replication_slot('lifeboat_db')",
            )
            .is_ok()
        }),
        "the slot could not be dropped"
    );
    let reported = || {
        pg.events()
            .iter()
            .any(|e| e["command"] == "wal stream" && e["outcome"] == "slot dropped")
    };
    assert!(wait_until(30, reported), "{}", log());
    assert!(log().contains("\"action\":\"slot dropped\""), "{}", log());
    assert!(
        wait_until(20, || pg.sql(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'lifeboat_db' AND active"
        ) == "1"),
        "the slot was not made again: {}",
        log()
    );
    let after = insert_micros(&pg, "after-drop");
    pg.switch_wal();
    assert!(wait_until(20, || window_end(&pg) >= after), "{}", log());
    let vj = pg.ok(&["--json", "wal", "verify", "db"]).json();
    assert_eq!(vj[0]["gaps"].as_array().unwrap().len(), 0, "{vj}");
    let port = restored(&pg, &["--latest"], "r2");
    assert_eq!(
        rows(&pg, port),
        vec!["streamed-1", "streamed-2", "after-drop"]
    );
    pg.stop_dir("r2");
}

/// The repository's disk fills in the middle of a base backup read in place: the job fails
/// saying so, no snapshot is recorded, PostgreSQL ends the backup with the session (no slot
/// left behind), and with room again the next backup works.
#[test]
fn a_full_disk_during_a_base_backup_in_place_records_nothing_and_ends_the_backup() {
    let pg = Pg::start("", &[]);
    let Some(_guard) = tmpfs(&pg.lab.p("repo"), "1m") else {
        return;
    };
    pg.ok(&["repo", "init"]);
    let r = pg.run(&["backup", "db-base"]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("disk is full") || r.stderr.contains("No space left"),
        "{}",
        r.stderr
    );
    assert_eq!(pg.lab.snapshot_count("main"), 0, "a half-written snapshot");
    assert!(
        wait_until(10, || pg.sql("SELECT count(*) FROM pg_replication_slots")
            == "0"),
        "the backup's slot outlived it"
    );
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=400m"])
        .arg(pg.lab.p("repo"))
        .output()
        .unwrap();
    assert!(grown.status.success(), "{:?}", grown);
    let ok = pg.ok(&["--json", "backup", "db-base"]).json();
    assert!(
        ok[0]["via"]
            .as_str()
            .unwrap()
            .starts_with("read the data directory"),
        "{ok}"
    );
}

/// A role that may stream a backup (REPLICATION) but not start one on the data directory
/// (no superuser): the base backup is streamed with pg_basebackup, and the output says why.
#[test]
fn a_role_without_the_right_to_start_a_backup_in_place_streams_it_instead() {
    let pg = Pg::start("", &[]);
    pg.sql("CREATE ROLE streamer LOGIN REPLICATION");
    let plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml"))
        .unwrap()
        .replace("user: postgres", "user: streamer");
    std::fs::write(pg.lab.p("lifeboat.yaml"), plan).unwrap();
    let r = pg.ok(&["--json", "backup", "db-base"]).json();
    let via = r[0]["via"].as_str().unwrap_or_default();
    assert!(
        via.starts_with(
            "streamed with pg_basebackup (the backup could not start on the data directory"
        ),
        "{r}"
    );
}
