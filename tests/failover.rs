//! `lifeboat serve` against a real primary and a real synchronous streaming standby: kill -9 the
//! primary, keep writing through Lifeboat's endpoint, check no acknowledged write is lost and the
//! standby took over; restart the old primary and see it fenced; stop and restart the daemon and
//! see it keep its state.

mod common;
use common::pair::{Pair, Writes};
use common::pg::Pg;
use common::*;

use std::process::Stdio;
use std::time::{Duration, Instant};

/// `dig` the responder: the A record, or the status when there is none.
fn dig(port: u16, name: &str) -> String {
    dig_over(port, name, "+notcp")
}

/// The same over UDP (`+notcp`) or TCP (`+tcp`).
fn dig_over(port: u16, name: &str, transport: &str) -> String {
    let (status, answer, out) = common::dig(port, name, transport);
    match answer {
        Some(a) if status == "NOERROR" => {
            assert!(
                out.contains("\t3\tIN\tA\t") || out.contains(" 3 IN A "),
                "ttl 3: {out}"
            );
            a
        }
        _ => status,
    }
}

/// Garbage on a health endpoint gets 400 (or a closed connection), headers far over the limit
/// 431; a DNS query that does not parse gets FORMERR with its id, noise without a header no
/// answer, and a query truncated inside TCP's length prefix is dropped.
fn assert_malformed_is_refused(http_port: u16, dns_port: u16) {
    use std::io::{Read, Write};
    let raw = |bytes: &[u8]| -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    for garbage in [
        &b"\x00\x01\x02 hello\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /primary HTTP/9.9\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        let out = raw(garbage);
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.1 505"),
            "{garbage:?}: {out}"
        );
    }
    let huge = format!(
        "GET /primary HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let out = raw(huge.as_bytes());
    assert!(
        out.is_empty() || out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );

    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // A header claiming one question, and a name whose compression points at itself.
    let q = [
        0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1,
    ];
    udp.send_to(&q, ("127.0.0.1", dns_port)).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = udp.recv_from(&mut buf).expect("FORMERR comes back");
    assert!(
        n >= 12 && buf[0] == 0xAB && buf[1] == 0xCD,
        "the id is kept"
    );
    assert_eq!(buf[3] & 0x0F, 1, "FORMERR");
    udp.send_to(b"\x01\x02", ("127.0.0.1", dns_port)).unwrap();
    assert!(udp.recv_from(&mut buf).is_err(), "noise gets no answer");
    let mut t = std::net::TcpStream::connect(("127.0.0.1", dns_port)).unwrap();
    let _ = t.write_all(&[0x00, 0x40, 0xAB]);
    drop(t);
}

/// GET a health endpoint: the status code.
fn http_status(port: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sync_failover_through_the_endpoint_loses_nothing_and_fences_the_old_primary() {
    let (ha, hb, dns) = (free_port(), free_port(), free_port());
    let pair = Pair::new(
        "sync",
        &format!("health_listen: {{ a: \"127.0.0.1:{ha}\", b: \"127.0.0.1:{hb}\" }}, dns: {{ listen: \"127.0.0.1:{dns}\", name: db.test.internal, ttl: 3s, records: {{ a: 10.0.0.1, b: 10.0.0.2 }} }},"),
        "",
    );
    let pg = &pair.pg;
    // Notifications: a Slack-style receiver, and a JSON endpoint that never answers.
    let (hook, received) = webhook_receiver();
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_port = hang.local_addr().unwrap().port();
    let mut plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml")).unwrap();
    plan += &format!(
        "notifications:\n  - {{ webhook: \"http://127.0.0.1:{hook}/slack\", format: slack, min_severity: P2 }}\n  - {{ webhook: \"http://127.0.0.1:{hang_port}/hangs\", timeout: 1s, retries: 1 }}\n"
    );
    std::fs::write(pg.lab.p("lifeboat.yaml"), plan).unwrap();
    let mut daemon = pair.start("");
    let mut log = Writes::default();
    pair.write_some(&mut log, 20);
    assert_eq!(
        pg.sql_on(
            pg.port,
            "postgres",
            "SELECT sync_state FROM pg_stat_replication"
        ),
        "sync"
    );
    // The load balancer's view: a is the primary, b a streaming replica.
    assert_eq!(http_status(ha, "/primary"), 200);
    assert_eq!(http_status(hb, "/primary"), 503);
    assert_eq!(http_status(hb, "/replica"), 200);
    assert_eq!(http_status(ha, "/replica"), 503);
    assert_eq!(http_status(hb, "/replica?lag=1GiB"), 200);
    assert_eq!(http_status(hb, "/health"), 200);
    // The name follows the primary (a real resolver client asks).
    assert_eq!(dig(dns, "db.test.internal"), "10.0.0.1");
    // Malformed requests and packets are answered with an error (or not at all) and change
    // nothing: the endpoints answer as before.
    assert_malformed_is_refused(ha, dns);
    assert_eq!(http_status(ha, "/primary"), 200);
    assert_eq!(dig(dns, "db.test.internal"), "10.0.0.1");
    // Status shows the standby's lag and its sync state.
    let st = pg.ok(&["status"]).stdout;
    assert!(st.contains("streams to b (streaming, sync"), "{st}");

    // kill -9 the primary and keep writing until the endpoint accepts again.
    unsafe { libc::kill(pg.postmaster_pid("pgdata"), libc::SIGKILL) };
    pair.await_failover(&mut log, Duration::from_secs(60));
    for _ in 0..5 {
        log.write(&pair);
    }
    // The standby is the primary now and holds every acknowledged write.
    assert_eq!(pair.in_recovery(pair.sport), Some(false));
    pair.assert_nothing_lost(&log, pair.sport);
    log.assert_one_primary_at_a_time(pg.port, pair.sport);
    assert!(
        pair.daemon_log().contains("sync_standbys_cleared"),
        "{}",
        pair.daemon_log()
    );
    let state = pair.state();
    assert_eq!(state["primary"], "b", "{state}");
    assert_eq!(state["epoch"], 2, "{state}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_status(hb, "/primary") != 200 {
        assert!(Instant::now() < deadline, "b's /primary never turned 200");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_status(ha, "/primary"), 503);
    assert_eq!(http_status(ha, "/health"), 503);
    assert_eq!(dig(dns, "db.test.internal"), "10.0.0.2");
    assert_eq!(dig_over(dns, "db.test.internal", "+tcp"), "10.0.0.2");
    assert_eq!(dig(dns, "other.test.internal"), "REFUSED");
    // The Slack receiver got the failover; the hanging endpoint did not hold it up, and its
    // failure is recorded after bounded retries.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = received.lock().unwrap().clone();
        if got
            .iter()
            .any(|b| b.contains("[P1] pgtest failover: failed over to b"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failover notification: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pg
        .events()
        .iter()
        .any(|e| e["command"] == "notify" && e["outcome"] == "failed")
    {
        assert!(Instant::now() < deadline, "hanging endpoint not recorded");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ev = pg.events();
    let failed = ev
        .iter()
        .find(|e| e["command"] == "notify" && e["outcome"] == "failed")
        .unwrap();
    assert_eq!(failed["figures"]["attempts"], 2, "{failed}");
    assert!(
        !failed.to_string().contains(&format!("{hang_port}/hangs")),
        "{failed}"
    );
    let fo = ev.iter().find(|e| e["command"] == "failover").unwrap();
    assert!(fo["seq"].as_i64() < failed["seq"].as_i64());
    drop(hang);

    // The old primary restarted: fenced (stopped), never reachable through the endpoint.
    // (`pg_ctl start -w` may itself report failure: the daemon can stop it before it is ready.)
    // (A killed postmaster leaves its pid file; `pg_ctl status` tells whether one runs.)
    let running = || {
        pg.tool("pg_ctl", &["-D", "pgdata", "status"])
            .status
            .success()
    };
    let fenced = || pg.events().iter().any(|e| e["command"] == "fence");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_start = Instant::now() - Duration::from_secs(10);
    while !fenced() || running() {
        assert!(
            Instant::now() < deadline,
            "the old primary was not fenced: {}\n{}",
            std::fs::read_to_string(pg.lab.p("pg.log")).unwrap_or_default(),
            pair.daemon_log()
        );
        // Its killed backends may hold shared memory for a moment: retry the start.
        if !fenced() && !running() && last_start.elapsed() > Duration::from_secs(2) {
            let _ = pg.tool("pg_ctl", &["-D", "pgdata", "start", "-l", "pg.log"]);
            last_start = Instant::now();
        }
        // Meanwhile every write still lands on b.
        log.write(&pair);
        std::thread::sleep(Duration::from_millis(100));
    }
    log.assert_one_primary_at_a_time(pg.port, pair.sport);

    // SIGTERM: a clean exit; a restarted daemon keeps routing to b without a new failover.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let status = daemon.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    daemon = pair.start("");
    pair.write_some(&mut log, 1);
    assert_eq!(log.servers.last(), Some(&pair.sport));
    let st = pg.ok(&["--json", "status"]).json();
    assert_eq!(st[0]["daemon"]["primary"], "b", "{st}");
    assert_eq!(pair.failovers().len(), 1);
    pair.assert_nothing_lost(&log, pair.sport);
    drop(daemon);
}

/// A hung primary (every process SIGSTOPped): a stall shorter than the detection window
/// changes nothing; a longer one fails over; the primary thawed afterwards is fenced.
#[test]
fn hung_primary_short_stall_is_ridden_out_long_one_fails_over() {
    let pair = Pair::new("async", "", "");
    let pg = &pair.pg;
    // A failover runbook: its built-in steps are what the daemon does; its hook runs after.
    let mut plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml")).unwrap();
    plan += "runbooks:\n  db-failover:\n    kind: failover\n    service: db\n    steps:\n      - { action: fence, site: a }\n      - { action: promote, site: b }\n      - { name: dns, command: \"echo $LIFEBOAT_FROM $LIFEBOAT_TO $LIFEBOAT_EPOCH > hook.txt\" }\n      - { name: scale, command: \"true\", approval: true, on_failure: continue }\n";
    std::fs::write(pg.lab.p("lifeboat.yaml"), plan).unwrap();
    pg.chown();
    let _daemon = pair.start("");
    let mut log = Writes::default();
    pair.write_some(&mut log, 10);
    // Stopped for 0.6 s: less than half the window of three 500 ms checks.
    pair.signal_server("pgdata", libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(600));
    pair.signal_server("pgdata", libc::SIGCONT);
    std::thread::sleep(Duration::from_secs(2));
    pair.write_some(&mut log, 5);
    assert!(pair.failovers().is_empty(), "{}", pair.daemon_log());
    assert_eq!(log.servers.last(), Some(&pg.port));
    assert_eq!(pair.in_recovery(pair.sport), Some(true));

    // Stopped for good: failover to b.
    pair.signal_server("pgdata", libc::SIGSTOP);
    let t = Instant::now();
    pair.await_failover(&mut log, Duration::from_secs(30));
    eprintln!("hung primary: writes on b after {:?}", t.elapsed());
    let f = pair.failovers();
    assert_eq!(f.len(), 1, "{f:?}");
    let reason = f[0]["figures"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("queries time out"), "{reason}");
    // The runbook's hook ran with the failover's facts; the gate could not be approved.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pg.lab.p("hook.txt").exists() {
        assert!(
            Instant::now() < deadline,
            "hook never ran:\n{}",
            pair.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read_to_string(pg.lab.p("hook.txt"))
            .unwrap()
            .trim(),
        "a b 2"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let rb = loop {
        if let Some(e) = pg.events().into_iter().find(|e| e["command"] == "runbook") {
            break e;
        }
        assert!(Instant::now() < deadline, "runbook not recorded");
        std::thread::sleep(Duration::from_millis(100));
    };
    let outcomes: Vec<&str> = rb["figures"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].as_str().unwrap())
        .collect();
    // fence and promote are the failover's own steps, timed by it; the gate refuses.
    assert_eq!(outcomes, ["ok", "ok", "ok", "refused"], "{rb}");
    let fence = rb["figures"]["steps"][0]["detail"].as_str().unwrap();
    assert!(
        fence.starts_with("done by the automatic failover: a does not answer"),
        "{fence}"
    );
    let promote = rb["figures"]["steps"][1]["detail"].as_str().unwrap();
    assert!(promote.contains("b promoted (pg_promote)"), "{promote}");
    // Thawed, it still believes it is a primary: fenced, never written to via the endpoint.
    pair.signal_server("pgdata", libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg
        .tool("pg_ctl", &["-D", "pgdata", "status"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "thawed primary not fenced:\n{}",
            pair.daemon_log()
        );
        log.write(&pair);
        std::thread::sleep(Duration::from_millis(100));
    }
    pair.write_some(&mut log, 3);
    log.assert_one_primary_at_a_time(pg.port, pair.sport);
    assert_eq!(pair.state()["primary"], "b");
}

/// The daemon killed (SIGKILL, via a failpoint) right after promoting the standby and before
/// recording it: restarted, it finishes the same failover, with the same epoch.
#[test]
fn daemon_killed_after_promotion_finishes_the_failover_when_restarted() {
    let pair = Pair::new("sync", "", "");
    let pg = &pair.pg;
    let mut daemon = pair.start("failover-after-promote");
    let mut log = Writes::default();
    pair.write_some(&mut log, 10);
    unsafe { libc::kill(pg.postmaster_pid("pgdata"), libc::SIGKILL) };
    pair.assert_died_at_failpoint(&mut daemon);
    let st = pair.state();
    assert_eq!(st["in_progress"], serde_json::json!(["b", 2]), "{st}");
    assert_eq!(pair.in_recovery(pair.sport), Some(false), "b was promoted");
    // No route while no daemon runs: nothing can write through the endpoint.
    assert!(pair.write(-1).is_none());
    daemon = pair.start("");
    pair.await_failover(&mut log, Duration::from_secs(30));
    let st = pair.state();
    assert_eq!(st["primary"], "b", "{st}");
    assert_eq!(st["epoch"], 2, "{st}");
    assert!(st["in_progress"].is_null(), "{st}");
    let f = pair.failovers();
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0]["figures"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("resuming"),
        "{f:?}"
    );
    pair.assert_nothing_lost(&log, pair.sport);
    drop(daemon);
}

/// A command health check fails on a primary that still runs; the daemon records its intent
/// and is killed before acting. The old primary is still writable when the daemon restarts:
/// the resumed failover stops it before promoting b, so there are never two primaries.
#[test]
fn daemon_killed_after_intent_resumes_by_fencing_the_live_old_primary() {
    let pair = Pair::new(
        "sync",
        "health_checks: { a: [ { command: \"test ! -e a-down\" } ] },",
        "",
    );
    let pg = &pair.pg;
    let mut daemon = pair.start("failover-after-intent");
    let mut log = Writes::default();
    pair.write_some(&mut log, 10);
    std::fs::write(pg.lab.p("a-down"), "").unwrap();
    pair.assert_died_at_failpoint(&mut daemon);
    assert!(
        pair.daemon_log().contains("command check exited with"),
        "{}",
        pair.daemon_log()
    );
    assert_eq!(
        pair.in_recovery(pg.port),
        Some(false),
        "a still runs as primary"
    );
    assert_eq!(pair.in_recovery(pair.sport), Some(true));
    daemon = pair.start("");
    pair.await_failover(&mut log, Duration::from_secs(30));
    assert!(
        !pg.tool("pg_ctl", &["-D", "pgdata", "status"])
            .status
            .success(),
        "the old primary still runs"
    );
    log.assert_one_primary_at_a_time(pg.port, pair.sport);
    pair.assert_nothing_lost(&log, pair.sport);
    assert_eq!(pair.state()["epoch"], 2);
    drop(daemon);
}

/// A standby that stopped replicating is never promoted, even in an async tier with no lag
/// limit; the daemon holds, says why, and the endpoint takes no writes.
#[test]
fn standby_that_is_not_replicating_is_not_promoted() {
    let hb = free_port();
    let pair = Pair::new(
        "async",
        &format!("health_listen: {{ b: \"127.0.0.1:{hb}\" }},"),
        "",
    );
    let pg = &pair.pg;
    let _daemon = pair.start("");
    let mut log = Writes::default();
    pair.write_some(&mut log, 5);
    pg.sql_on(
        pair.sport,
        "postgres",
        "ALTER SYSTEM SET primary_conninfo = ''",
    );
    pg.sql_on(pair.sport, "postgres", "SELECT pg_reload_conf()");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = pg.ok(&["status"]).stdout;
        if st.contains("standby, NOT streaming") {
            break;
        }
        assert!(Instant::now() < deadline, "status never showed it: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    pair.write_some(&mut log, 5);
    // The daemon sees it at its next check.
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_status(hb, "/replica") != 503 {
        assert!(Instant::now() < deadline, "/replica stays 200");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_status(hb, "/health"), 200);
    unsafe { libc::kill(pg.postmaster_pid("pgdata"), libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pair
        .daemon_log()
        .contains("was not replicating from the primary")
    {
        assert!(Instant::now() < deadline, "{}", pair.daemon_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pair.in_recovery(pair.sport), Some(true), "b was promoted");
    assert!(pair.write(-1).is_none(), "the endpoint took a write");
    assert!(pair.failovers().is_empty());
    let st = pg.ok(&["status"]).stdout;
    assert!(st.contains("daemon's last decision"), "{st}");
    assert!(st.contains("no standby may be promoted"), "{st}");
}

/// Members the daemon must never promote: one it cannot log in to, and one of another cluster
/// (a standby of a different initdb). Both are named in status and in the hold decision.
#[test]
fn wrong_credentials_and_another_cluster_are_refused_with_reasons() {
    let pg0 = Pg::start("", &[]);
    // The stranger: a standby of pg0's cluster (another system identifier).
    let cport = free_port();
    let pair = Pair::new(
        "async",
        "",
        &format!("      c: {{ host: 127.0.0.1, port: {cport}, user: postgres }}\n"),
    );
    let pg = &pair.pg;
    pg.start_standby(
        pg0.port,
        "stranger",
        &format!("port = {cport}\narchive_mode = off\n"),
    );
    // b's credentials are wrong: a role that does not exist.
    let plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml")).unwrap();
    let plan = plan.replace(
        &format!("port: {}, user: postgres, data_dir: standby", pair.sport),
        &format!("port: {}, user: nobody, data_dir: standby", pair.sport),
    );
    std::fs::write(pg.lab.p("lifeboat.yaml"), plan).unwrap();
    let st = pg.ok(&["status"]).stdout;
    assert!(st.contains("role \"nobody\" does not exist"), "{st}");
    assert!(st.contains("c belongs to ANOTHER cluster"), "{st}");
    let _daemon = pair.start("");
    let mut log = Writes::default();
    pair.write_some(&mut log, 5);
    unsafe { libc::kill(pg.postmaster_pid("pgdata"), libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pair.daemon_log().contains("no standby may be promoted") {
        assert!(Instant::now() < deadline, "{}", pair.daemon_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let l = pair.daemon_log();
    assert!(l.contains("b is not healthy"), "{l}");
    assert!(l.contains("c belongs to another cluster"), "{l}");
    assert_eq!(pair.in_recovery(pair.sport), Some(true));
    assert!(pair.failovers().is_empty());
    // The stranger is neither promoted nor stopped.
    assert_eq!(
        pg.sql_on(cport, "postgres", "SELECT pg_is_in_recovery()"),
        "t"
    );
    let _ = pg.tool("pg_ctl", &["-D", "stranger", "stop", "-m", "immediate"]);
    drop(pg0);
}

/// Lifeboat's own checks of the primary fail while its witness says clients still reach it: a
/// partition between Lifeboat and the primary, not a failure, so no failover. Once the witness
/// fails too, it fails over.
#[test]
fn a_witness_that_still_reaches_the_primary_prevents_a_failover() {
    let pair = Pair::new(
        "async",
        "health_checks: { a: [ { command: \"test ! -e a-down\" } ] }, witness: { a: [ { command: \"test -e clients-ok\" } ] },",
        "",
    );
    let pg = &pair.pg;
    let _daemon = pair.start("");
    let mut log = Writes::default();
    pair.write_some(&mut log, 5);
    std::fs::write(pg.lab.p("clients-ok"), "").unwrap();
    std::fs::write(pg.lab.p("a-down"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pair.daemon_log().contains("its clients still reach it") {
        assert!(Instant::now() < deadline, "{}", pair.daemon_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(pair.failovers().is_empty(), "{}", pair.daemon_log());
    assert_eq!(pair.in_recovery(pair.sport), Some(true));
    std::fs::remove_file(pg.lab.p("clients-ok")).unwrap();
    pair.await_failover(&mut log, Duration::from_secs(20));
    log.assert_one_primary_at_a_time(pg.port, pair.sport);
}

/// Planned switchover without a daemon, and back: no write lost, the old primary streams from
/// the new one (synchronously again), every step in the evidence log.
#[test]
fn switchover_and_back_loses_nothing_and_keeps_both_members() {
    let pair = Pair::new("sync", "", "");
    let pg = &pair.pg;
    // As often in production: standbys stream as a dedicated role, the only one pg_hba lets
    // replicate over TCP. A member Lifeboat turns into a standby must stream as it too.
    pg.sql("CREATE ROLE replicator REPLICATION LOGIN");
    pg.sql_on(
        pair.sport,
        "postgres",
        &format!(
            "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user=replicator application_name=b'",
            pg.port
        ),
    );
    let hba = "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication replicator 127.0.0.1/32 trust\n";
    for dir in ["pgdata", "standby"] {
        std::fs::write(pg.lab.p(&format!("{dir}/pg_hba.conf")), hba).unwrap();
    }
    pg.sql("SELECT pg_reload_conf()");
    pg.sql_on(pair.sport, "postgres", "SELECT pg_reload_conf()");
    let streams_as = |port: u16| {
        pg.sql_on(
            port,
            "postgres",
            "SELECT string_agg(usename || ' ' || state, ',') FROM pg_stat_replication",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while streams_as(pg.port) != "replicator streaming" {
        assert!(Instant::now() < deadline, "b: {}", streams_as(pg.port));
        std::thread::sleep(Duration::from_millis(100));
    }
    for v in 1..=50 {
        pg.sql_on(pg.port, "postgres", &format!("INSERT INTO w VALUES ({v})"));
    }
    let r = pg.run(&["switchover", "db", "--to", "b"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("switchover done: a → b, epoch"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("a now streams from b"), "{}", r.stdout);
    assert_eq!(pair.in_recovery(pair.sport), Some(false));
    assert_eq!(pair.in_recovery(pg.port), Some(true));
    assert_eq!(
        pg.sql_on(pair.sport, "postgres", "SELECT count(*) FROM w"),
        "50"
    );
    assert_eq!(
        pg.sql_on(pair.sport, "postgres", "SHOW synchronous_standby_names"),
        "\"a\""
    );
    // Writes on b are synchronously replicated to a.
    pg.sql_on(pair.sport, "postgres", "INSERT INTO w VALUES (51)");
    assert_eq!(
        pg.sql_on(
            pair.sport,
            "postgres",
            "SELECT application_name || ' ' || state || ' ' || sync_state FROM pg_stat_replication"
        ),
        "a streaming sync"
    );
    assert_eq!(streams_as(pair.sport), "replicator streaming");
    let ev = pg.events();
    let sw: Vec<_> = ev.iter().filter(|e| e["command"] == "switchover").collect();
    assert_eq!(sw.len(), 1);
    assert_eq!(sw[0]["outcome"], "ok");
    let steps: Vec<&str> = sw[0]["figures"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "pre-checks",
            "stop-writes",
            "catch-up",
            "promote",
            "switch-traffic",
            "rejoin"
        ]
    );
    assert!(sw[0]["figures"]["downtime_ms"].as_u64().is_some());
    // And back.
    let r = pg.run(&["--json", "switchover", "db", "--to", "a"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let rep = r.json();
    assert_eq!(rep["from"], "b");
    assert_eq!(rep["old_primary_streaming"], true);
    assert_eq!(pair.in_recovery(pg.port), Some(false));
    assert_eq!(
        pg.sql_on(pg.port, "postgres", "SELECT count(*) FROM w"),
        "51"
    );
    // Switching to the primary itself, or to a site that is not a member: refused.
    let r = pg.run(&["switchover", "db", "--to", "a"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("a is already the primary"),
        "{}",
        r.stderr
    );
    let r = pg.run(&["switchover", "db", "--to", "z"]);
    assert!(r.stderr.contains("no member at site z"), "{}", r.stderr);
}

/// A switchover through the running daemon: clients writing through the endpoint lose
/// nothing and never see two primaries; the daemon's state follows.
#[test]
fn switchover_through_the_daemon_moves_the_endpoint() {
    let pair = Pair::new("sync", "", "");
    let pg = &pair.pg;
    let _daemon = pair.start("");
    let mut log = Writes::default();
    pair.write_some(&mut log, 10);
    let lb = pg.cmd(&["switchover", "db", "--to", "b"]).output().unwrap();
    let out = String::from_utf8_lossy(&lb.stdout);
    assert!(
        lb.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&lb.stderr)
    );
    assert!(out.contains("handed to the running daemon"), "{out}");
    pair.await_failover(&mut log, Duration::from_secs(20));
    pair.write_some(&mut log, 10);
    log.assert_one_primary_at_a_time(pg.port, pair.sport);
    pair.assert_nothing_lost(&log, pair.sport);
    let st = pair.state();
    assert_eq!(st["primary"], "b", "{st}");
    assert_eq!(st["epoch"], 2, "{st}");
    // The daemon does not treat a (now a standby) as a failure or a rogue primary.
    std::thread::sleep(Duration::from_secs(2));
    assert!(pair.failovers().is_empty(), "{}", pair.daemon_log());
    assert_eq!(pair.in_recovery(pg.port), Some(true));
}

/// A standby that does not catch up in time: the switchover is called off, the old primary
/// takes writes again, nothing is lost.
#[test]
fn switchover_to_a_standby_that_does_not_catch_up_is_called_off() {
    let pair = Pair::new("async", "", "");
    let pg = &pair.pg;
    pg.sql_on(pair.sport, "postgres", "SELECT pg_wal_replay_pause()");
    for v in 1..=20 {
        pg.sql_on(pg.port, "postgres", &format!("INSERT INTO w VALUES ({v})"));
    }
    let r = pg.run(&["switchover", "db", "--to", "b", "--timeout", "2s"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout
            .contains("switchover ABORTED: b replayed only up to"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("writes are back on the old primary"),
        "{}",
        r.stdout
    );
    assert_eq!(pair.in_recovery(pg.port), Some(false));
    assert_eq!(pair.in_recovery(pair.sport), Some(true));
    pg.sql_on(pg.port, "postgres", "INSERT INTO w VALUES (21)");
    assert_eq!(
        pg.sql_on(pg.port, "postgres", "SELECT count(*) FROM w"),
        "21"
    );
    let ev = pg.events();
    assert!(ev
        .iter()
        .any(|e| e["command"] == "switchover" && e["outcome"] == "aborted"));
    // Replay resumed, the same switchover goes through.
    pg.sql_on(pair.sport, "postgres", "SELECT pg_wal_replay_resume()");
    // b reconnects to the restarted a (its WAL receiver retries every few seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.sql_on(
        pg.port,
        "postgres",
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
    ) != "1"
    {
        assert!(Instant::now() < deadline, "b never streamed from a again");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = pg.run(&["switchover", "db", "--to", "b"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        pg.sql_on(pair.sport, "postgres", "SELECT count(*) FROM w"),
        "21"
    );
}

/// Seed 001's manual failover: refused while the primary is healthy (unless forced), refused
/// without a terminal or with a wrong typed confirmation, carried out with --yes once the
/// primary is down, and recorded.
#[test]
fn manual_failover_prechecks_confirmation_and_run() {
    // Async: with no daemon history, a sync tier's refusal (was b synchronous? unknown) holds.
    let pair = Pair::new("async", "", "");
    let pg = &pair.pg;
    pg.sql_on(pg.port, "postgres", "INSERT INTO w VALUES (1)");
    let r = pg.run(&["failover", "db", "--dry-run"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout.contains("[FAIL] primary a is healthy"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("[ok  ] b: healthy standby of the same cluster"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("[WARN] backups: no successful backup of db"),
        "{}",
        r.stdout
    );
    let r = pg.run(&["failover", "db", "--dry-run", "--force"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("3. stop a (pg_ctl stop -m fast)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("decision: db: manual failover from a to b"),
        "{}",
        r.stdout
    );
    // Not a terminal, no --yes.
    let r = pg.run(&["failover", "db", "--force"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no terminal"), "{}", r.stderr);
    // A terminal (script(1) gives it one) and the wrong name typed.
    let cmdline = format!(
        "{} --plan {} failover db --force",
        pg.lb.display(),
        pg.lab.p("lifeboat.yaml").display()
    );
    let mut c = std::process::Command::new("script");
    c.args(["-qec", &cmdline, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let _ = stdin.write_all(b"dbx\n");
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Type the service name (db)"), "{text}");
    assert!(text.contains("does not match"), "{text}");
    assert_eq!(pair.in_recovery(pair.sport), Some(true), "nothing was done");
    // The primary dies: a manual failover goes through.
    unsafe { libc::kill(pg.postmaster_pid("pgdata"), libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    let r = pg.run(&["failover", "db", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("[ok  ] primary a is down"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("failover done: b now takes writes"),
        "{}",
        r.stdout
    );
    let f = pair.b_took_over_with_one_row();
    assert_eq!(f["figures"]["manual"], true);
    assert_eq!(pair.state()["primary"], "b");
}

/// A sync tier with no daemon history: nobody can prove b was synchronous when a died, so the
/// manual failover is refused until the operator accepts the possible loss, which the
/// pre-checks, the evidence log and the notifications (sent by the command itself) all say.
#[test]
fn manual_failover_in_a_sync_tier_without_history_needs_accepted_loss() {
    let pair = Pair::new("sync", "", "");
    let pg = &pair.pg;
    let (hook, received) = webhook_receiver();
    let mut plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml")).unwrap();
    plan += &format!("notifications:\n  - {{ webhook: \"http://127.0.0.1:{hook}/hook\" }}\n");
    std::fs::write(pg.lab.p("lifeboat.yaml"), plan).unwrap();
    pg.sql_on(pg.port, "postgres", "INSERT INTO w VALUES (1)");
    unsafe { libc::kill(pg.postmaster_pid("pgdata"), libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    let r = pg.run(&["failover", "db", "--yes"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stdout.contains("[FAIL] b was not a synchronous standby"),
        "{}",
        r.stdout
    );
    assert_eq!(pair.in_recovery(pair.sport), Some(true), "nothing was done");
    let r = pg.run(&["failover", "db", "--yes", "--accept-data-loss"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("ACCEPTED (--accept-data-loss)"),
        "{}",
        r.stdout
    );
    let f = pair.b_took_over_with_one_row();
    assert_eq!(f["figures"]["accept_data_loss"], true);
    // The command waited for its notifications before exiting.
    let got = received.lock().unwrap().join("\n");
    assert!(got.contains("manual failover to b by"), "{got}");
    assert!(got.contains(": starting"), "{got}");
    assert!(got.contains("done, b takes writes"), "{got}");
    assert!(got.contains("\"severity\":\"P1\""), "{got}");
    let notes: Vec<_> = pg
        .events()
        .into_iter()
        .filter(|e| e["command"] == "notify")
        .collect();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes.iter().all(|e| e["outcome"] == "ok"));
    // b had everything a wrote: rejoining a finds no divergence (pg_waldump finds no record
    // after the fork) and makes it b's standby.
    let r = pg.run(&["rejoin", "db", "a"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("no divergence"), "{}", r.stdout);
    assert!(r.stdout.contains("; streaming"), "{}", r.stdout);
}

/// A forced manual failover through the running daemon: it stops the healthy primary and
/// moves the endpoint; clients lose nothing (sync) and never see two primaries.
#[test]
fn forced_manual_failover_through_the_daemon() {
    let pair = Pair::new("sync", "", "");
    let pg = &pair.pg;
    let _daemon = pair.start("");
    let mut log = Writes::default();
    pair.write_some(&mut log, 10);
    let r = pg.run(&["failover", "db", "--force", "--yes", "--to", "b"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), pair.daemon_log());
    pair.await_failover(&mut log, Duration::from_secs(20));
    log.assert_one_primary_at_a_time(pg.port, pair.sport);
    pair.assert_nothing_lost(&log, pair.sport);
    assert!(!pg
        .tool("pg_ctl", &["-D", "pgdata", "status"])
        .status
        .success());
    assert_eq!(pair.state()["epoch"], 2);
}

/// An async standby that missed the primary's last commits is promoted; the old primary is
/// rejoined: the divergence report names the discarded transactions, then pg_rewind (or, when
/// rewind is impossible, a fresh clone — said so) makes it a streaming standby; failback gives
/// the primary back.
fn diverged_pair(wal_log_hints: bool) -> Pair {
    let pair = Pair::new("async", "", "");
    let pg = &pair.pg;
    if wal_log_hints {
        pg.sql("ALTER SYSTEM SET wal_log_hints = on");
        pg.pg_ctl(&["restart", "-m", "fast", "-w", "-l", "pg.log"]);
    }
    // The last checkpoint lies a few WAL segments before the fork (as after any busy spell):
    // pg_rewind needs those segments of a, which a's crash recovery must not recycle.
    pg.sql_on(pg.port, "postgres", "CHECKPOINT");
    for _ in 0..3 {
        pg.sql_on(
            pg.port,
            "postgres",
            "CREATE TABLE IF NOT EXISTS filler(x int)",
        );
        pg.sql_on(pg.port, "postgres", "INSERT INTO filler VALUES (1)");
        pg.sql_on(pg.port, "postgres", "SELECT pg_switch_wal()");
    }
    for v in 1..=10 {
        pg.sql_on(pg.port, "postgres", &format!("INSERT INTO w VALUES ({v})"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.sql_on(pair.sport, "postgres", "SELECT count(*) FROM w") != "10" {
        assert!(Instant::now() < deadline, "b never replayed the first rows");
        std::thread::sleep(Duration::from_millis(100));
    }
    // b stops receiving; a commits five more transactions that b never sees.
    pg.sql_on(
        pair.sport,
        "postgres",
        "ALTER SYSTEM SET primary_conninfo = ''",
    );
    pg.sql_on(pair.sport, "postgres", "SELECT pg_reload_conf()");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.sql_on(
        pg.port,
        "postgres",
        "SELECT count(*) FROM pg_stat_replication",
    ) != "0"
    {
        assert!(Instant::now() < deadline, "b keeps streaming");
        std::thread::sleep(Duration::from_millis(100));
    }
    for v in 11..=15 {
        pg.sql_on(pg.port, "postgres", &format!("INSERT INTO w VALUES ({v})"));
    }
    unsafe { libc::kill(pg.postmaster_pid("pgdata"), libc::SIGKILL) };
    let o = pg.tool("pg_ctl", &["-D", "standby", "promote", "-w"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    pg.sql_on(pair.sport, "postgres", "INSERT INTO w VALUES (100)");
    // b is the primary now; it streams to whoever connects.
    pg.sql_on(
        pair.sport,
        "postgres",
        "ALTER SYSTEM RESET primary_conninfo",
    );
    pg.sql_on(pair.sport, "postgres", "SELECT pg_reload_conf()");
    pair
}

#[test]
fn rejoin_with_rewind_reports_the_discarded_transactions_then_failback() {
    let pair = diverged_pair(true);
    let pg = &pair.pg;
    let (hook, received) = webhook_receiver();
    let mut plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml")).unwrap();
    plan += &format!(
        "notifications:\n  - {{ webhook: \"http://127.0.0.1:{hook}/slack\", format: slack }}\n"
    );
    std::fs::write(pg.lab.p("lifeboat.yaml"), plan).unwrap();
    let r = pg.run(&["rejoin", "db", "a"]);
    assert_eq!(
        r.code,
        0,
        "{}\n{}",
        r.all(),
        std::fs::read_to_string(pg.lab.p("pgdata/log/lifeboat-start.log")).unwrap_or_default()
    );
    assert!(r.stdout.contains("DIVERGENCE: a wrote"), "{}", r.stdout);
    assert!(
        r.stdout.contains("5 committed transaction(s) discarded"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("(pg_rewind)"), "{}", r.stdout);
    assert!(r.stdout.contains("; streaming"), "{}", r.stdout);
    assert_eq!(pair.in_recovery(pg.port), Some(true));
    // a follows b: it has b's row, not its own discarded ones.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.sql_on(pg.port, "postgres", "SELECT count(*) FROM w WHERE v = 100") != "1" {
        assert!(Instant::now() < deadline, "a does not replay b's writes");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        pg.sql_on(
            pg.port,
            "postgres",
            "SELECT count(*) FROM w WHERE v > 10 AND v < 100"
        ),
        "0"
    );
    let ev = pg.events();
    let rj = ev.iter().find(|e| e["command"] == "rejoin").unwrap();
    assert_eq!(rj["outcome"], "ok");
    let div = &rj["figures"]["divergence"];
    assert_eq!(div["commits"].as_array().unwrap().len(), 5, "{div}");
    let dump = std::fs::read_to_string(div["file"].as_str().unwrap()).unwrap();
    assert!(dump.contains("COMMIT"), "{dump}");
    // Refused: rejoining the primary itself.
    let r = pg.run(&["rejoin", "db", "b"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("b is the primary"), "{}", r.stderr);
    // Failback: a streams already, so it is a switchover back.
    let r = pg.run(&["failback", "db", "--to", "a"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("a already streams"), "{}", r.stdout);
    assert!(
        r.stdout.contains("failback done: a is the primary again"),
        "{}",
        r.stdout
    );
    assert_eq!(pair.in_recovery(pg.port), Some(false));
    assert_eq!(pair.in_recovery(pair.sport), Some(true));
    assert_eq!(
        pg.sql_on(pg.port, "postgres", "SELECT count(*) FROM w"),
        "11"
    );
    // Both were told, by the commands themselves (no daemon runs): the discarded transactions
    // as a P2, the switchover back as a P3.
    let got = received.lock().unwrap().join("\n");
    assert!(
        got.contains("[P2] ")
            && got.contains("5 committed transaction(s) of its old timeline discarded"),
        "{got}"
    );
    assert!(
        got.contains("[P3] ") && got.contains("switchover b → a by"),
        "{got}"
    );
}

#[test]
fn rejoin_when_rewind_is_impossible_clones_again_and_says_so() {
    // No data checksums, no wal_log_hints: pg_rewind refuses.
    let pair = diverged_pair(false);
    let pg = &pair.pg;
    let r = pg.run(&["rejoin", "db", "a"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("DIVERGENCE: a wrote"), "{}", r.stdout);
    assert!(r.stdout.contains("pg_rewind is impossible"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("(pg_basebackup: pg_rewind was impossible"),
        "{}",
        r.stdout
    );
    assert_eq!(pair.in_recovery(pg.port), Some(true));
    assert_eq!(
        pg.sql_on(pg.port, "postgres", "SELECT count(*) FROM w WHERE v = 100"),
        "1"
    );
    // Its old data directory is kept beside.
    let kept = std::fs::read_dir(pg.lab.path())
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("pgdata.lifeboat-old-")
        });
    assert!(kept);
}

/// A plan's own failback runbook: `lifeboat failback` runs it — rejoin (pg_rewind, with the
/// divergence), switchover back, then the plan's hook — every step timed and recorded.
#[test]
fn failback_runs_the_plans_failback_runbook() {
    let pair = diverged_pair(true);
    let pg = &pair.pg;
    let mut plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml")).unwrap();
    plan += "runbooks:\n  db-failback:\n    kind: failback\n    service: db\n    steps:\n      - { action: rejoin }\n      - { action: switchover, timeout: 60s }\n      - { name: dns, command: \"echo $LIFEBOAT_TO > failback.txt\" }\n";
    std::fs::write(pg.lab.p("lifeboat.yaml"), plan).unwrap();
    pg.chown();
    let r = pg.run(&["failback", "db", "--to", "a"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("runbook db-failback:"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("a rejoined (pg_rewind), 5 discarded transaction(s)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("b → a, epoch"), "{}", r.stdout);
    assert_eq!(pair.in_recovery(pg.port), Some(false));
    assert_eq!(pair.in_recovery(pair.sport), Some(true));
    assert_eq!(
        std::fs::read_to_string(pg.lab.p("failback.txt"))
            .unwrap()
            .trim(),
        "a"
    );
    // b's row is there, a's discarded ones are not.
    assert_eq!(
        pg.sql_on(pg.port, "postgres", "SELECT count(*) FROM w"),
        "11"
    );
    let ev = pg.events();
    let steps: Vec<(&str, &str)> = ev
        .iter()
        .filter(|e| e["command"] == "runbook-step")
        .map(|e| {
            (
                e["target"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("db-failback/rejoin", "ok"),
            ("db-failback/switchover", "ok"),
            ("db-failback/dns", "ok")
        ]
    );
    let fb = ev.iter().find(|e| e["command"] == "failback").unwrap();
    assert_eq!(fb["outcome"], "ok");
}

/// The new primary has moved on and recycled its WAL from the fork: a rewound member could
/// never catch up, so rejoin clones it again and says why (instead of a standby that waits
/// forever for WAL "already removed").
#[test]
fn rejoin_after_the_new_primary_recycled_its_wal_clones_again() {
    let pair = diverged_pair(true);
    let pg = &pair.pg;
    for _ in 0..3 {
        pg.sql_on(pair.sport, "postgres", "INSERT INTO filler VALUES (2)");
        pg.sql_on(pair.sport, "postgres", "SELECT pg_switch_wal()");
    }
    pg.sql_on(pair.sport, "postgres", "CHECKPOINT");
    pg.sql_on(pair.sport, "postgres", "CHECKPOINT");
    let r = pg.run(&["rejoin", "db", "a"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("no longer has its WAL from the fork"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("(pg_basebackup"), "{}", r.stdout);
    assert!(r.stdout.contains("; streaming"), "{}", r.stdout);
    assert_eq!(
        pg.sql_on(pg.port, "postgres", "SELECT count(*) FROM w WHERE v = 100"),
        "1"
    );
}

/// A member that dies right after its own promotion (a switchover back, then a crash) still
/// names the older timeline in pg_control: rejoin takes its timeline from its WAL, so the fork
/// and the divergence report are those of the last switch (timeline 3 → 4).
#[test]
fn rejoin_right_after_a_promotion_uses_the_members_newest_timeline() {
    let pair = Pair::new("sync", "", "");
    let pg = &pair.pg;
    pg.sql_on(pg.port, "postgres", "INSERT INTO w VALUES (1)");
    pg.ok(&["switchover", "db", "--to", "b"]);
    pg.ok(&["switchover", "db", "--to", "a"]);
    unsafe { libc::kill(pg.postmaster_pid("pgdata"), libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    pg.ok(&["failover", "db", "--yes", "--accept-data-loss"]);
    let r = pg.run(&["rejoin", "db", "a"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let ev = pg.events();
    let rj = ev.iter().rev().find(|e| e["command"] == "rejoin").unwrap();
    assert_eq!(rj["figures"]["divergence"]["old_timeline"], 3, "{rj}");
    assert_eq!(rj["figures"]["divergence"]["new_timeline"], 4, "{rj}");
    assert!(r.stdout.contains("; streaming"), "{}", r.stdout);
}

/// One incident after another, on one pair and one daemon: a switchover, then a crash of the
/// new primary a moment later; a rejoin of the crashed member, then a crash of the primary
/// again. Each crash is failed over, with nothing acknowledged lost. Both used to hold for up
/// to `checkpoint_timeout`: the standby's timeline was read from its last restartpoint, which
/// still named the timeline before the switch ("a is on timeline 1, behind the primary's 2").
#[test]
fn switchover_then_crash_and_rejoin_then_crash_both_fail_over() {
    let pair = Pair::new("sync", "", "");
    let pg = &pair.pg;
    // A long checkpoint_timeout, as by default (5 min): no restartpoint can come to the rescue.
    for dir in ["pgdata", "standby"] {
        pg.append_conf(
            &format!("{dir}/postgresql.auto.conf"),
            "checkpoint_timeout = 30min\n",
        );
    }
    pg.sql("SELECT pg_reload_conf()");
    pg.sql_on(pair.sport, "postgres", "SELECT pg_reload_conf()");
    let _daemon = pair.start("");
    let mut log = Writes::default();
    pair.write_some(&mut log, 5);
    let sw = pg.run(&["switchover", "db", "--to", "b"]);
    assert_eq!(sw.code, 0, "{}", sw.all());
    pair.await_primary(&mut log, pair.sport, Duration::from_secs(20));
    pair.write_some(&mut log, 5);
    // b (timeline 2) dies a moment after the switchover: a must take over.
    pair.signal_server("standby", libc::SIGKILL);
    pair.await_primary(&mut log, pg.port, Duration::from_secs(20));
    pair.write_some(&mut log, 5);
    pair.assert_nothing_lost(&log, pg.port);
    assert_eq!(pair.state()["primary"], "a");

    // Rejoin b as a's standby (it streams on a's timeline 3), then a dies: b must take over.
    let r = pg.run(&["rejoin", "db", "b"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.sql_on(
        pg.port,
        "postgres",
        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
    ) != "1"
    {
        assert!(Instant::now() < deadline, "b never became synchronous");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The daemon must have seen b listed as synchronous before a crash can be failed over
    // to it (until then it holds: it cannot know b has every acknowledged write).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = pair.daemon_log();
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("\"event\":\"decision\""));
        if last.is_some_and(|l| l.contains("primary a healthy; b synchronous standby")) {
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    pair.write_some(&mut log, 5);
    // The standby's timeline is the one it streams, in status too.
    let st = pg.ok(&["--json", "status", "db"]).json();
    let b = st[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["site"] == "b")
        .unwrap_or_else(|| panic!("{st}"))
        .clone();
    assert_eq!(b["probe"]["timeline"], 3, "{st}");
    pair.signal_server("pgdata", libc::SIGKILL);
    pair.await_primary(&mut log, pair.sport, Duration::from_secs(20));
    pair.write_some(&mut log, 5);
    pair.assert_nothing_lost(&log, pair.sport);
    let f = pair.failovers();
    assert_eq!(f.len(), 2, "{}", pair.daemon_log());
    assert!(f.iter().all(|e| e["outcome"] == "ok"), "{f:?}");
}

/// The daemon dies before it noticed the primary's crash (or right after, before it recorded
/// a failover), and starts again while the primary is down. It never sees the primary healthy
/// in this run, so which standby was synchronous comes from its record on disk: fresh, it
/// fails over with nothing lost; too old to trust, it holds and says why; without it, as
/// before, it holds (it used to hold forever in every case: "b was not a synchronous standby").
#[test]
fn daemon_restarted_while_the_primary_is_down_promotes_on_its_sync_record() {
    let pair = Pair::new("sync", "", "");
    let pg = &pair.pg;
    let mut daemon = pair.start("");
    let mut log = Writes::default();
    pair.write_some(&mut log, 10);
    let record = pg.lab.p(".lifeboat/failover/db.sync.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&record).is_ok_and(|r| r.contains("\"b\"")) {
        assert!(
            Instant::now() < deadline,
            "no sync record:\n{}",
            pair.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(rec["synchronous"], serde_json::json!(["b"]), "{rec}");
    assert_eq!(rec["primary"], "a");
    pair.write_some(&mut log, 10);
    // The daemon dies, then the primary: nothing watches while it goes.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGKILL) };
    daemon.0.wait().unwrap();
    pair.signal_server("pgdata", libc::SIGKILL);
    let fresh = std::fs::read(&record).unwrap();

    // A record from three hours ago: the primary may have run unobserved since. Hold.
    let mut old: serde_json::Value = serde_json::from_slice(&fresh).unwrap();
    old["seen_at_ms"] = serde_json::json!(old["seen_at_ms"].as_i64().unwrap() - 3 * 3600 * 1000);
    std::fs::write(&record, serde_json::to_vec(&old).unwrap()).unwrap();
    let decision = pg.lab.p(".lifeboat/daemon/db.json");
    let held = |daemon: &mut Daemon| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d =
                std::fs::read_to_string(pg.lab.p(".lifeboat/daemon/db.json")).unwrap_or_default();
            if d.contains("\"hold\"") {
                unsafe { libc::kill(daemon.0.id() as i32, libc::SIGKILL) };
                daemon.0.wait().unwrap();
                return d;
            }
            assert!(Instant::now() < deadline, "{}", pair.daemon_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut daemon = pair.start("");
    let d = held(&mut daemon);
    assert!(
        d.contains("b was last seen synchronous 3 h ago") && d.contains("--accept-data-loss"),
        "{d}"
    );
    assert_eq!(
        pair.in_recovery(pair.sport),
        Some(true),
        "b must not be promoted"
    );
    // No record at all: hold, as without one.
    std::fs::remove_file(&record).unwrap();
    std::fs::remove_file(&decision).unwrap();
    let mut daemon = pair.start("");
    let d = held(&mut daemon);
    assert!(d.contains("b was not a synchronous standby"), "{d}");
    assert_eq!(pair.in_recovery(pair.sport), Some(true));

    // The record as the daemon left it (seconds old): b is promoted, nothing lost.
    std::fs::write(&record, &fresh).unwrap();
    let _daemon = pair.start("");
    pair.await_failover(&mut log, Duration::from_secs(20));
    pair.assert_nothing_lost(&log, pair.sport);
    let f = pair.failovers();
    assert_eq!(f.len(), 1, "{}", pair.daemon_log());
    assert!(
        f[0]["figures"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("promoting b: synchronous standby"),
        "{f:?}"
    );
}

/// The API of a daemon watching a real pair: the status shows the roles; a failover needs the
/// typed confirmation and is refused with its pre-checks while the primary is healthy; a
/// viewer may not switch over; a switchover through the API moves the endpoint and is
/// recorded with the token's name; then the new primary crashes and the API shows the
/// failover back, without a restart of anything.
#[test]
fn api_shows_roles_switches_over_with_confirmation_and_follows_the_next_failover() {
    let pair = Pair::new("sync", "", "");
    let pg = &pair.pg;
    let (port, t) = pair.with_api(&[("oncall", "operator"), ("wallboard", "viewer")]);
    let (op, ro) = (t[0].clone(), t[1].clone());
    let _daemon = pair.start("");
    pair.await_api(port);
    let roles = |want: (&str, &str)| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, s) = api(port, "GET", "/api/v1/services/db", Some(&ro), None);
            assert_eq!(code, 200, "{s}");
            let role = |site: &str| {
                s["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["site"] == site)
                    .map(|m| m["role"].as_str().unwrap_or("").to_string())
                    .unwrap_or_default()
            };
            // `want.1` empty: the other member is down.
            let other = if want.1.is_empty() {
                true
            } else {
                role(want.1) == "standby"
            };
            if s["primary"] == want.0 && role(want.0) == "primary" && other {
                return s;
            }
            assert!(Instant::now() < deadline, "{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let s = roles(("a", "b"));
    assert_eq!(s["epoch"], 1, "{s}");
    // The same through the remote command line, with the token; its dry run refuses.
    let remote = |args: &[&str]| {
        let mut c = pg.cmd(&["remote", "--url", &format!("http://127.0.0.1:{port}")]);
        c.args(args).env("LIFEBOAT_TOKEN", &op);
        let o = c.output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, out) = remote(&["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("primary a, epoch 1") && out.contains("primary, takes writes"),
        "{out}"
    );
    let (code, out) = remote(&["failover", "db", "--dry-run"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("primary a is healthy"), "{out}");
    let mut log = Writes::default();
    pair.write_some(&mut log, 5);

    let post =
        |path: &str, token: &str, body: &str| api(port, "POST", path, Some(token), Some(body));
    let path = "/api/v1/services/db/failover";
    let (code, e) = post(path, &op, "{}");
    assert_eq!((code, e["field"].as_str()), (400, Some("confirm")), "{e}");
    let (code, e) = post(path, &op, r#"{"confirm":"db"}"#);
    assert_eq!(code, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("healthy"), "{e}");
    let (code, e) = post(path, &op, r#"{"confirm":"db","force":true}"#);
    assert_eq!(code, 403, "forcing needs an admin: {e}");
    let (code, p) = post(path, &op, r#"{"dry_run":true}"#);
    assert_eq!(code, 200, "{p}");
    assert!(p["checks"].as_array().unwrap().len() >= 2, "{p}");

    let path = "/api/v1/services/db/switchover";
    let (code, _) = post(path, &ro, r#"{"to":"b","confirm":"db"}"#);
    assert_eq!(code, 403);
    let (code, e) = post(path, &op, r#"{"to":"z","confirm":"db"}"#);
    assert_eq!((code, e["field"].as_str()), (400, Some("to")), "{e}");
    let (code, e) = post(path, &op, r#"{"to":"b","confirm":"dbx"}"#);
    assert_eq!((code, e["field"].as_str()), (400, Some("confirm")), "{e}");
    let (code, j) = post(path, &op, r#"{"to":"b","confirm":"db"}"#);
    assert_eq!(code, 202, "{j}");
    assert_eq!(j["command"], "lifeboat switchover db --to b");
    let id = j["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        let (_, j) = api(port, "GET", &format!("/api/v1/jobs/{id}"), Some(&ro), None);
        if j["state"] != "running" {
            break j;
        }
        assert!(Instant::now() < deadline, "{j}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(done["state"], "succeeded", "{done}\n{}", pair.daemon_log());
    assert!(done["result"]["aborted"].is_null(), "{done}");
    pair.await_failover(&mut log, Duration::from_secs(20));
    roles(("b", "a"));
    let sw: Vec<_> = pg
        .events()
        .into_iter()
        .filter(|e| e["command"] == "switchover")
        .collect();
    assert_eq!(sw.len(), 1);
    assert_eq!(sw[0]["actor"], "oncall", "the token's name is the actor");

    // The next incident: the new primary crashes; the API follows the failover back to a.
    pair.write_some(&mut log, 5);
    unsafe { libc::kill(pg.postmaster_pid("standby"), libc::SIGKILL) };
    pair.await_primary(&mut log, pg.port, Duration::from_secs(30));
    let s = roles(("a", ""));
    assert_eq!(s["epoch"], 3, "{s}");
    pair.assert_nothing_lost(&log, pg.port);
    let (_, h) = api(port, "GET", "/api/v1/services/db/history", Some(&ro), None);
    let cmds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["command"].as_str().unwrap())
        .collect();
    assert!(
        cmds.contains(&"failover") && cmds.contains(&"switchover"),
        "{cmds:?}"
    );
}
