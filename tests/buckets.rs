//! Replicated buckets (`kind: bucket`) between two real S3-protocol servers on loopback (two
//! moto servers, each its own region): `lifeboat serve` keeps the replica, `verify` compares,
//! `restore --from-replica` copies back what the source lost.

mod common;
use common::moto::{moto, moto_with_auth, Moto};
use common::*;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// One raw S3 request to a moto server (moto accepts unsigned requests): status, headers and
/// body.
fn s3(
    m: &Moto,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n",
        m.port,
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head[9..12].parse().unwrap();
    let mut body = out[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[end + 2 + n + 2..];
    }
}

/// The bucket as Lifeboat's S3 client sees it (signed requests: moto refuses anonymous reads).
fn bucket(m: &Moto, bucket: &str) -> lifeboat_store::bucket::Bucket {
    lifeboat_store::bucket::Bucket::open(
        "test",
        &format!(
            "s3://{bucket}?endpoint=http://127.0.0.1:{}&region=us-east-1",
            m.port
        ),
        Some(("testing".into(), "testing".into())),
    )
    .unwrap()
}

fn put(m: &Moto, b: &str, key: &str, body: &[u8], ctype: Option<&str>, user: &[(&str, &str)]) {
    bucket(m, b).put(key, body.to_vec(), ctype, user).unwrap();
}

fn get(m: &Moto, b: &str, key: &str) -> Option<Vec<u8>> {
    bucket(m, b).get(key).unwrap()
}

fn delete(m: &Moto, b: &str, key: &str) {
    bucket(m, b).delete(key).unwrap();
}

fn state(lab: &Lab, service: &str) -> serde_json::Value {
    let st = lab.ok(&["--json", "status", service]).json();
    st[0]["state"].clone()
}

/// Wait until the replica holds every source object (nothing pending after a pass that began
/// after `since`).
fn await_replicated(lab: &Lab, service: &str, objects: u64, since: i64, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = state(lab, service);
        if st["pending_objects"] == 0
            && st["source_objects"] == objects
            && st["last_pass"]["started_ms"].as_i64().unwrap_or(0) > since
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not replicated: {st:#}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Wait until the service's replication reports a failure; its state then.
fn await_failing(lab: &Lab, service: &str, log: &dyn Fn() -> String) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = state(lab, service);
        if st["error"].is_string() {
            return st;
        }
        assert!(Instant::now() < deadline, "{st:#}\n{}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_bucket_stays_replicated_across_two_s3_servers_and_restores_from_its_replica() {
    let (east, west) = (moto(), moto());
    for (m, b) in [(&east, "uploads"), (&west, "uploads-dr")] {
        let (st, head, _) = s3(m, "PUT", &format!("/{b}"), &[], b"");
        assert_eq!(st, 200, "{head}");
    }
    // 30 small objects with metadata, one of 20 MiB (copied in pieces), one empty.
    for i in 0..30 {
        put(
            &east,
            "uploads",
            &format!("img/{i:03}.png"),
            &noise(1000 + i * 97, i as u64),
            Some("image/png"),
            &[("owner", "user-7")],
        );
    }
    let big = noise(20 * 1024 * 1024 + 13, 99);
    put(&east, "uploads", "video/big.bin", &big, None, &[]);
    put(&east, "uploads", "empty", b"", None, &[]);
    let lab = Lab::new();
    let metrics = free_port();
    let side = |m: &Moto, b: &str, region: &str| {
        format!("{{ url: \"s3://{b}?endpoint=http://127.0.0.1:{}&region={region}\", access_key_id: testing, secret_access_key: testing }}", m.port)
    };
    lab.plan(&format!(
        r#"name: buckets
tiers:
  std: {{ rpo: 15m, rto: 1h }}
sites: [east, west]
services:
  uploads:
    kind: bucket
    tier: std
    source: {}
    replica: {}
    interval: 300ms
    parallel: 4
metrics: {{ listen: "127.0.0.1:{metrics}" }}
"#,
        side(&east, "uploads", "us-east-1"),
        side(&west, "uploads-dr", "us-west-2"),
    ));
    lab.ok(&["plan", "check"]);
    let started = now_ms();
    let mut daemon = lab.serve("daemon.log", &[]);
    let log = || std::fs::read_to_string(lab.p("daemon.log")).unwrap_or_default();
    await_replicated(&lab, "uploads", 32, started, &log);
    assert_eq!(get(&west, "uploads-dr", "video/big.bin").unwrap(), big);
    assert_eq!(get(&west, "uploads-dr", "empty").unwrap(), b"");
    let (ctype, user) = bucket(&west, "uploads-dr")
        .metadata("img/007.png")
        .unwrap()
        .unwrap();
    assert_eq!(ctype.as_deref(), Some("image/png"));
    assert_eq!(
        user.get("owner").map(String::as_str),
        Some("user-7"),
        "{user:?}"
    );
    let v = lab.run(&["verify", "uploads"]);
    assert_eq!(v.code, 0, "{}", v.all());
    assert!(
        v.stdout
            .contains("32 object(s) at the source, 32 in the replica"),
        "{}",
        v.stdout
    );

    // New and changed objects follow; a deletion is kept in the replica (deletes: keep).
    let since = now_ms();
    put(&east, "uploads", "img/new.png", b"fresh", None, &[]);
    put(&east, "uploads", "img/003.png", b"edited", None, &[]);
    delete(&east, "uploads", "img/004.png");
    await_replicated(&lab, "uploads", 32, since, &log);
    assert_eq!(get(&west, "uploads-dr", "img/new.png").unwrap(), b"fresh");
    assert_eq!(get(&west, "uploads-dr", "img/003.png").unwrap(), b"edited");
    assert!(get(&west, "uploads-dr", "img/004.png").is_some(), "kept");
    let st = state(&lab, "uploads");
    let lag = now_ms() - st["replicated_until_ms"].as_i64().unwrap();
    assert!((0..30_000).contains(&lag), "{st:#}");
    // The same through /metrics (refreshed every 2 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, text) = http(metrics, "GET", "/metrics", None, None);
        let m = |k: &str| lifeboat_server::metrics::sample(&text, k);
        if m(r#"lifeboat_bucket_pending_objects{service="uploads"}"#) == Some(0.0)
            && m(r#"lifeboat_bucket_replicated_until_timestamp_seconds{service="uploads"}"#)
                .is_some()
            && m(r#"lifeboat_bucket_replication_failing{service="uploads"}"#) == Some(0.0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // The source loses objects: restore copies them back from the replica, content intact.
    let lost = ["img/010.png", "img/011.png", "video/big.bin"];
    let before: Vec<Vec<u8>> = lost
        .iter()
        .map(|k| get(&east, "uploads", k).unwrap())
        .collect();
    for k in lost {
        delete(&east, "uploads", k);
    }
    daemon.kill_now();
    let r = lab.ok(&["restore", "uploads", "--from-replica"]);
    // Back: the three lost and the one deleted earlier (kept in the replica).
    assert!(r.stdout.contains("copied 4 object(s)"), "{}", r.all());
    for (k, b) in lost.iter().zip(&before) {
        assert_eq!(&get(&east, "uploads", k).unwrap(), b, "{k}");
    }

    // A replica object damaged behind Lifeboat's back: verify names it.
    put(&west, "uploads-dr", "img/020.png", b"tampered", None, &[]);
    let v = lab.run(&["verify", "uploads"]);
    assert_eq!(v.code, 1, "{}", v.all());
    assert!(
        v.stdout
            .contains("another version in the replica: img/020.png"),
        "{}",
        v.stdout
    );
    // A daemon started again repairs it with its first full comparison.
    let since = now_ms();
    let _daemon = lab.serve("daemon.log", &[]);
    await_replicated(&lab, "uploads", 33, since, &log);
    assert_eq!(
        get(&west, "uploads-dr", "img/020.png"),
        get(&east, "uploads", "img/020.png")
    );
    let v = lab.run(&["verify", "uploads"]);
    assert_eq!(v.code, 0, "{}", v.all());
    let ev = lab.events();
    assert!(
        ev.iter()
            .any(|e| e["command"] == "bucket replication" && e["outcome"] == "ok"),
        "{ev:#?}"
    );
}

/// A replica bucket that does not exist: the pass fails with what to do, once in the evidence
/// log, the metric says failing, and the daemon retries with a growing delay (no busy loop).
/// With `deletes: propagate`, deletions reach the replica.
#[test]
fn a_missing_replica_fails_clearly_without_a_busy_loop_and_deletions_propagate() {
    let (east, west) = (moto(), moto());
    let (st, _, _) = s3(&east, "PUT", "/media", &[], b"");
    assert_eq!(st, 200);
    for i in 0..5 {
        put(&east, "media", &format!("f{i}"), &noise(5000, i), None, &[]);
    }
    let lab = Lab::new();
    let side = |m: &Moto, b: &str| {
        format!("{{ url: \"s3://{b}?endpoint=http://127.0.0.1:{}&region=us-east-1&retries=0&timeout=5s\", access_key_id: testing, secret_access_key: testing }}", m.port)
    };
    lab.plan(&format!(
        "name: buckets\ntiers:\n  std: {{ rpo: 15m, rto: 1h }}\nsites: [east, west]\nservices:\n  media:\n    kind: bucket\n    tier: std\n    source: {}\n    replica: {}\n    deletes: propagate\n    interval: 200ms\n",
        side(&east, "media"),
        side(&west, "media-dr"),
    ));
    let _d = lab.serve("daemon.log", &[]);
    let log = || std::fs::read_to_string(lab.p("daemon.log")).unwrap_or_default();
    let failing = await_failing(&lab, "media", &log);
    let e = failing["error"].as_str().unwrap();
    assert!(e.contains("the replica bucket s3://media-dr"), "{e}");
    assert!(
        failing["hint"]
            .as_str()
            .unwrap()
            .contains("bucket does not exist: create it"),
        "{failing:#}"
    );
    let human = lab.ok(&["status", "media"]).stdout;
    assert!(human.contains("FAILING since"), "{human}");
    // Retried with a growing delay: over 4 s at a 200 ms interval, a handful of attempts.
    std::thread::sleep(Duration::from_secs(4));
    let attempts = log()
        .lines()
        .filter(|l| l.contains("\"retry_in_s\""))
        .count();
    assert!(
        (1..=6).contains(&attempts),
        "{attempts} attempts:\n{}",
        log()
    );
    let failed: Vec<serde_json::Value> = lab
        .events()
        .into_iter()
        .filter(|e| e["command"] == "bucket replication")
        .collect();
    assert_eq!(failed.len(), 1, "recorded once: {failed:#?}");
    assert_eq!(failed[0]["outcome"], "failed");

    // The bucket is made: the daemon recovers by itself (the retry delay is at most 5 minutes;
    // here a few seconds), and deletions propagate.
    let (st, _, _) = s3(&west, "PUT", "/media-dr", &[], b"");
    assert_eq!(st, 200);
    let deadline = Instant::now() + Duration::from_secs(40);
    while get(&west, "media-dr", "f4").is_none() {
        assert!(Instant::now() < deadline, "{}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
    delete(&east, "media", "f1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&west, "media-dr", "f1").is_some() {
        assert!(Instant::now() < deadline, "{}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(state(&lab, "media")["error"].is_null());
}

/// Plan mistakes in a bucket service are named with their line and field.
#[test]
fn bucket_plan_mistakes_are_named() {
    let lab = Lab::new();
    lab.plan(
        "name: b\ntiers:\n  std: { rpo: 15m, rto: 1h }\nsites: [east]\nservices:\n  media:\n    kind: bucket\n    tier: std\n    source: { url: \"s3://media?endpoint=http://127.0.0.1:9000\", site: mars }\n    replica: { url: \"s3://media/dr?endpoint=http://127.0.0.1:9000\" }\n    parallel: 0\n  other:\n    kind: bucket\n    tier: std\n    source: { url: /local/dir }\n    replica: { url: \"s3://x?bogus=1\" }\nbackups:\n  j: { service: media, repository: r }\nrepositories:\n  r: { url: repo }\n",
    );
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let e = r.all();
    for want in [
        "services.media.source.site: site `mars` is not in `sites`",
        "services.media.replica.url: the replica is the source bucket",
        "services.media.parallel: must be 1 to 64",
        "services.other.source.url: `/local/dir` is not an s3:// URL",
        "services.other.replica.url: `s3://x?bogus=1`",
        "backups.j.service: service `media` is a bucket",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

/// Wrong credentials on one side (a server that checks signatures): the replica side is named
/// with what to check, the secret appears nowhere; with the right keys it replicates.
#[test]
fn wrong_credentials_on_the_replica_side_are_named_and_never_shown() {
    let east = moto();
    let (west, id, secret) = moto_with_auth("photos-dr");
    let (st, _, _) = s3(&east, "PUT", "/photos", &[], b"");
    assert_eq!(st, 200);
    put(&east, "photos", "a.jpg", b"jpeg", Some("image/jpeg"), &[]);
    let lab = Lab::new();
    let plan = |key: &str| {
        format!(
            "name: b\ntiers:\n  std: {{ rpo: 15m, rto: 1h }}\nsites: [east, west]\nservices:\n  photos:\n    kind: bucket\n    tier: std\n    source: {{ url: \"s3://photos?endpoint=http://127.0.0.1:{}\", access_key_id: testing, secret_access_key: testing }}\n    replica: {{ url: \"s3://photos-dr?endpoint=http://127.0.0.1:{}&retries=0\", access_key_id: {key}, secret_access_key: \"${{WEST_SECRET}}\" }}\n    interval: 200ms\n",
            east.port, west.port
        )
    };
    let wrong = "not-the-secret-5d1e";
    lab.plan(&plan(&id));
    let mut d = lab.serve("daemon.log", &[("WEST_SECRET", wrong)]);
    let log = || std::fs::read_to_string(lab.p("daemon.log")).unwrap_or_default();
    let st = await_failing(&lab, "photos", &log);
    let e = st["error"].as_str().unwrap();
    assert!(e.starts_with("the replica bucket s3://photos-dr"), "{e}");
    assert!(
        st["hint"].as_str().unwrap().contains("access_key_id"),
        "{st:#}"
    );
    let human = lab.ok(&["status", "photos"]).stdout;
    let v = lab.run(&["verify", "photos"]);
    assert_ne!(v.code, 0, "{}", v.all());
    assert!(v.all().contains("the replica bucket"), "{}", v.all());
    for text in [
        log(),
        human,
        v.all(),
        serde_json::to_string(&lab.events()).unwrap(),
    ] {
        assert!(!text.contains(wrong), "the secret leaked: {text}");
    }
    d.kill_now();
    // The right secret: replicated.
    let since = now_ms();
    let _d = lab.serve("daemon.log", &[("WEST_SECRET", &secret)]);
    await_replicated(&lab, "photos", 1, since, &log);
}

/// An object changed or deleted at the source between the start of its copy and its read:
/// nothing is written to the replica (no object that looks complete and is not), and the
/// outcome says which, so the next pass copies the new version.
#[test]
fn an_object_changed_or_deleted_while_copied_writes_nothing() {
    let (east, west) = (moto(), moto());
    for (m, b) in [(&east, "docs"), (&west, "docs-dr")] {
        let (st, _, _) = s3(m, "PUT", &format!("/{b}"), &[], b"");
        assert_eq!(st, 200);
    }
    let (src, dst) = (bucket(&east, "docs"), bucket(&west, "docs-dr"));
    // 20 MiB: read in three pieces, each under If-Match.
    let first = noise(20 * 1024 * 1024, 1);
    src.put("report.pdf", first.clone(), None, &[]).unwrap();
    let r = src
        .copy_to_observed(&dst, "report.pdf", &|| {
            src.put("report.pdf", noise(20 * 1024 * 1024, 2), None, &[])
                .unwrap()
        })
        .unwrap();
    assert!(
        matches!(r, lifeboat_store::bucket::Copied::Changed),
        "{r:?}"
    );
    assert_eq!(dst.get("report.pdf").unwrap(), None, "nothing written");
    src.put("memo.txt", b"memo".to_vec(), None, &[]).unwrap();
    let r = src
        .copy_to_observed(&dst, "memo.txt", &|| src.delete("memo.txt").unwrap())
        .unwrap();
    assert!(
        matches!(r, lifeboat_store::bucket::Copied::Vanished),
        "{r:?}"
    );
    assert_eq!(dst.get("memo.txt").unwrap(), None);
    // Undisturbed, the same copy goes through.
    let r = src.copy_to(&dst, "report.pdf").unwrap();
    assert!(
        matches!(r, lifeboat_store::bucket::Copied::Done { .. }),
        "{r:?}"
    );
    assert_eq!(
        dst.get("report.pdf").unwrap(),
        src.get("report.pdf").unwrap()
    );
}
