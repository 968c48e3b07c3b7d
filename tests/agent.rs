//! Agents beside each PostgreSQL member, coordinated through a real etcd (Debian's
//! `etcd-server`) and acting on a real primary and synchronous standby:
//! - the primary's agent takes the leader key; its PostgreSQL crashing makes it resign at once
//!   and the standby's agent wins a larger token and promotes, with every acknowledged write;
//! - the old primary started again as a primary (a service manager restarting it) is stopped
//!   by its own agent: another member holds the key;
//! - etcd lost under a leader: its agent stops its server before the lease can run out;
//! - refusals: no etcd at start (nothing touched), a second agent for one member; an agent
//!   killed alone fails nothing over, and started again leads again.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::etcd::{etcd, free_port, Etcd};
use common::pair::Pair;
use common::Daemon;

/// A sync pair (a primary, b standby) whose plan coordinates through `etcd`; its agents leave
/// a stopped member stopped (`rejoin: manual`), so each step here is the agents' alone.
fn pair(etcd: &str) -> Pair {
    pair_with(etcd, "", "  rejoin: manual\n")
}

/// The same, with more keys in the service's `failover:` mapping and in `coordinator:`.
fn pair_with(etcd: &str, failover: &str, coordinator: &str) -> Pair {
    let p = Pair::new("sync", "", "");
    let plan = std::fs::read_to_string(p.pg.lab.p("lifeboat.yaml"))
        .unwrap()
        .replace("failover: { ", &format!("failover: {{ {failover} "));
    std::fs::write(
        p.pg.lab.p("lifeboat.yaml"),
        format!("{plan}\ncoordinator:\n  etcd: [\"{etcd}\"]\n  ttl: 3s\n{coordinator}"),
    )
    .unwrap();
    p.pg.ok(&["plan", "check"]);
    p
}

fn agent(p: &Pair, site: &str) -> Daemon {
    spawn_logged(
        p,
        &["agent", "--member", site],
        &format!("agent-{site}.log"),
    )
}

/// `lifeboat ARGS` in the background, its stderr appended to `log` in the lab.
fn spawn_logged(p: &Pair, args: &[&str], log: &str) -> Daemon {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p.pg.lab.p(log))
        .unwrap();
    let mut c = p.pg.cmd(args);
    c.stdout(Stdio::null()).stderr(log);
    Daemon(c.spawn().unwrap())
}

fn logs(p: &Pair) -> String {
    ["agent-a", "agent-b", "agent-c", "endpoint-b"]
        .iter()
        .map(|s| {
            format!(
                "--- {s}:\n{}",
                std::fs::read_to_string(p.pg.lab.p(&format!("{s}.log"))).unwrap_or_default()
            )
        })
        .collect()
}

/// The agent events (`agent lead`, `agent promote` …) in the evidence log.
fn agent_events(p: &Pair, what: &str) -> Vec<serde_json::Value> {
    p.pg.events()
        .into_iter()
        .filter(|e| e["command"] == format!("agent {what}"))
        .collect()
}

/// Wait (20 s at most) for an `agent WHAT` event of `member`, the n-th of its kind counted from
/// 1; returns it.
fn await_event(p: &Pair, what: &str, member: &str, nth: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<_> = agent_events(p, what)
            .into_iter()
            .filter(|e| e["figures"]["member"] == member)
            .collect();
        if got.len() >= nth {
            return got[nth - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no `agent {what}` #{nth} of {member}:\n{}",
            logs(p)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn await_stopped(p: &Pair, dir: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while postmaster_alive(p, dir) {
        assert!(
            Instant::now() < deadline,
            "{dir}'s server still runs:\n{}",
            logs(p)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn postmaster_alive(p: &Pair, dir: &str) -> bool {
    alive_at(&p.pg.lab.p(dir))
}

fn await_stopped_at(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive_at(dir) {
        assert!(Instant::now() < deadline, "{} still runs", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive_at(dir: &std::path::Path) -> bool {
    let Ok(t) = std::fs::read_to_string(dir.join("postmaster.pid")) else {
        return false;
    };
    let pid: i32 = t.lines().next().unwrap_or("0").trim().parse().unwrap_or(0);
    pid > 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z") && !s.contains(") X"))
}

fn token(e: &serde_json::Value) -> i64 {
    e["figures"]["token"]
        .as_i64()
        .unwrap_or_else(|| panic!("no token: {e}"))
}

#[test]
fn the_leader_resigns_when_postgres_crashes_the_standby_takes_over_and_a_restarted_old_primary_is_stopped(
) {
    let mut e: Etcd = etcd();
    e.await_healthy();
    // Its agents rejoin (the default); without wal_log_hints or checksums pg_rewind is
    // impossible, so a crashed old primary is left stopped, saying why.
    let p = pair_with(&e.client, "", "");
    let (_a, mut b) = (agent(&p, "a"), agent(&p, "b"));
    let lead = await_event(&p, "lead", "a", 1);
    let t1 = token(&lead);
    // Acknowledged writes on the primary (sync: each one is on b as well).
    let mut acked = Vec::new();
    for v in 1..=20 {
        if p.pg
            .try_sql_on(
                p.pg.port,
                "postgres",
                &format!("INSERT INTO w VALUES ({v})"),
            )
            .is_ok()
        {
            acked.push(v);
        }
    }
    assert_eq!(acked.len(), 20);
    // The agent published b as synchronous before b may campaign; give it a renewal.
    std::thread::sleep(Duration::from_millis(1500));
    p.signal_server("pgdata", libc::SIGKILL);
    let resign = await_event(&p, "resign", "a", 1);
    assert_eq!(token(&resign), t1, "{resign}");
    assert_eq!(resign["outcome"], "ok", "{resign}");
    let promote = await_event(&p, "promote", "b", 1);
    assert_eq!(promote["outcome"], "ok", "{promote}\n{}", logs(&p));
    let t2 = token(&promote);
    assert!(t2 > t1, "the successor's token {t2} is not above {t1}");
    assert_eq!(p.in_recovery(p.sport), Some(false));
    let have = p.pg.sql_on(p.sport, "postgres", "SELECT count(*) FROM w");
    assert_eq!(have, "20", "acknowledged writes lost");

    let rejoin = await_event(&p, "rejoin", "a", 1);
    assert_eq!(rejoin["outcome"], "failed", "{rejoin}");
    let why = rejoin["figures"]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("pg_rewind is impossible") && why.contains("stays stopped"),
        "{rejoin}"
    );
    assert!(!postmaster_alive(&p, "pgdata"));

    // A service manager starts the old primary again, as a primary: its agent stops it.
    // (The killed postmaster may linger unreaped here, a zombie whose pid file would stop the
    // start: the service manager's reaping, done by hand.)
    await_stopped(&p, "pgdata");
    let _ = std::fs::remove_file(p.pg.lab.p("pgdata/postmaster.pid"));
    let _ =
        p.pg.tool("pg_ctl", &["-D", "pgdata", "-l", "pg.log", "start"]);
    let fence = await_event(&p, "fence", "a", 1);
    let why = fence["figures"]["reason"].as_str().unwrap_or_default();
    assert!(why.contains("b leads"), "{fence}");
    assert!(why.contains(&t2.to_string()), "{fence}");
    await_stopped(&p, "pgdata");

    // The new leader's agent killed and started again: it leads again, with a larger token.
    b.kill_now();
    let _b = agent(&p, "b");
    let relead = await_event(&p, "lead", "b", 1);
    assert!(token(&relead) > t2, "{relead}");
    assert_eq!(p.in_recovery(p.sport), Some(false));

    // etcd lost under the new leader: its agent stops its server (the lease cannot be renewed).
    e.kill();
    let fence = await_event(&p, "fence", "b", 1);
    assert_eq!(fence["outcome"], "ok", "{fence}");
    // Stopped before the lease could run out (counted from the last renewal it sent).
    let left = fence["figures"]["lease_left_ms"].as_u64();
    assert!(left.is_some_and(|l| l > 0), "{fence}");
    await_stopped(&p, "standby");
}

#[test]
fn refusals_and_an_agent_killed_alone_fail_nothing_over() {
    // No etcd at the address: the agent stops at once, touching nothing.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let p = pair(&nowhere);
    let r = p.pg.run(&["agent", "--member", "a"]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.all().contains("etcd"), "{}", r.all());
    assert!(r.all().contains("no server was touched"), "{}", r.all());
    assert_eq!(p.in_recovery(p.pg.port), Some(false));
    assert_eq!(p.in_recovery(p.sport), Some(true));

    // With etcd: one agent per member, the second refused.
    let e = etcd();
    e.await_healthy();
    let plan = std::fs::read_to_string(p.pg.lab.p("lifeboat.yaml")).unwrap();
    std::fs::write(
        p.pg.lab.p("lifeboat.yaml"),
        plan.replace(&nowhere, &e.client),
    )
    .unwrap();
    let mut a = agent(&p, "a");
    let _b = agent(&p, "b");
    let t1 = token(&await_event(&p, "lead", "a", 1));
    let r = p.pg.run(&["agent", "--member", "a"]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.all().contains("another agent"), "{}", r.all());

    // The primary's agent killed alone: its lease runs out, but the standby still streams from
    // a live primary, so nothing fails over and writes go on.
    a.kill_now();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(p.in_recovery(p.sport), Some(true), "{}", logs(&p));
    assert_eq!(p.in_recovery(p.pg.port), Some(false));
    p.pg.sql("INSERT INTO w VALUES (1)");
    assert!(agent_events(&p, "promote").is_empty(), "{}", logs(&p));
    // Started again, it leads again with a new token.
    let _a = agent(&p, "a");
    let t2 = token(&await_event(&p, "lead", "a", 2));
    assert!(t2 > t1);
    assert_eq!(
        p.pg.sql_on(p.sport, "postgres", "SELECT count(*) FROM w"),
        "1"
    );
}

/// A primary paused (SIGSTOP) for longer than its lease: its agent resigns (the server stopped
/// answering), the standby takes over, and when the old primary wakes its agent stops it —
/// and a commit it takes meanwhile is never acknowledged (its synchronous standby follows it
/// no more).
#[test]
fn a_primary_paused_past_its_lease_is_stopped_when_it_wakes_and_acknowledges_nothing() {
    let e = etcd();
    e.await_healthy();
    let p = pair(&e.client);
    let (_a, _b) = (agent(&p, "a"), agent(&p, "b"));
    let t1 = token(&await_event(&p, "lead", "a", 1));
    p.pg.sql("INSERT INTO w VALUES (1)");
    std::thread::sleep(Duration::from_millis(1500));
    // A client connected before the pause, whose commit goes in while the server sleeps.
    let writer = pending_commit(&p, 2);
    std::thread::sleep(Duration::from_millis(300));
    p.signal_server("pgdata", libc::SIGSTOP);
    let promote = await_event(&p, "promote", "b", 1);
    assert!(token(&promote) > t1, "{promote}");
    std::thread::sleep(Duration::from_secs(4)); // past a's lease
    p.signal_server("pgdata", libc::SIGCONT);
    let fence = await_event(&p, "fence", "a", 1);
    assert!(
        fence["figures"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("b leads"),
        "{fence}"
    );
    await_stopped(&p, "pgdata");
    let out = writer.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains('2'),
        "the paused primary acknowledged a commit after it woke: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        p.pg.sql_on(p.sport, "postgres", "SELECT count(*) FROM w WHERE v = 1"),
        "1"
    );
}

/// A client connected to the primary now whose `INSERT INTO w VALUES (v)` goes in a second
/// later (`RETURNING v`: its output holds v only if the commit was acknowledged).
fn pending_commit(p: &Pair, v: u32) -> std::process::Child {
    let port = p.pg.port.to_string();
    let mut psql = std::process::Command::new(common::pg::pg_bin().join("psql"));
    psql.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "postgres",
        "-X",
        "-A",
        "-t",
        "-c",
    ])
    .arg(format!(
        "SELECT pg_sleep(1); INSERT INTO w VALUES ({v}) RETURNING v"
    ))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    psql.spawn().unwrap()
}

/// A pair whose agents each run a traffic endpoint for their site: returns the pair and the
/// endpoints' ports for sites a and b. Rejoin is manual so a test decides when a member returns.
fn pair_with_site_endpoints(etcd: &str) -> (Pair, u16, u16) {
    let (ea, eb) = (free_port(), free_port());
    let p = pair_with(
        etcd,
        &format!("site_listen: {{ a: \"127.0.0.1:{ea}\", b: \"127.0.0.1:{eb}\" }},"),
        "  rejoin: manual\n",
    );
    (p, ea, eb)
}

/// The whole primary node paused past its lease (its agent and its PostgreSQL SIGSTOPped
/// together: a stalled VM or host). The standby's agent takes over under a larger token. When
/// the node wakes, its agent still holds the old token in memory: it stops its server before
/// that server acknowledges anything, never leads under the old token again, and the endpoint
/// it runs routes under the new token only.
#[test]
fn a_whole_node_paused_past_its_lease_wakes_with_a_stale_token_that_nothing_accepts() {
    let e = etcd();
    e.await_healthy();
    let (p, ea, eb) = pair_with_site_endpoints(&e.client);
    let a = agent(&p, "a");
    let _b = agent(&p, "b");
    let t1 = token(&await_event(&p, "lead", "a", 1));
    await_route(&p, ea, p.pg.port);
    p.pg.try_sql_on(ea, "postgres", "INSERT INTO w VALUES (1)")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let writer = pending_commit(&p, 2);
    std::thread::sleep(Duration::from_millis(300));
    let apid = a.0.id() as i32;
    unsafe { libc::kill(apid, libc::SIGSTOP) };
    p.signal_server("pgdata", libc::SIGSTOP);
    let promote = await_event(&p, "promote", "b", 1);
    let t2 = token(&promote);
    assert!(t2 > t1, "{promote}");
    await_route(&p, eb, p.sport);
    std::thread::sleep(Duration::from_secs(2));
    // The node wakes: agent and server together.
    unsafe { libc::kill(apid, libc::SIGCONT) };
    p.signal_server("pgdata", libc::SIGCONT);
    let fence = await_event(&p, "fence", "a", 1);
    assert_eq!(fence["outcome"], "ok", "{fence}");
    await_stopped(&p, "pgdata");
    let out = writer.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains('2'),
        "the woken old primary acknowledged a commit: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The woken agent's endpoint routes to b, under b's token; a never led again.
    await_route(&p, ea, p.sport);
    p.pg.try_sql_on(ea, "postgres", "INSERT INTO w VALUES (3)")
        .unwrap();
    await_line(
        &p,
        "agent-a.log",
        &["endpoint_route", &format!("\"token\":{t2}")],
    );
    assert_eq!(agent_events(&p, "lead").len(), 1, "{}", logs(&p));
    assert!(
        agent_events(&p, "promote")
            .iter()
            .all(|e| e["figures"]["member"] == "b"),
        "{}",
        logs(&p)
    );
    assert_eq!(
        p.pg.sql_on(
            p.sport,
            "postgres",
            "SELECT string_agg(v::text, ',' ORDER BY v) FROM w"
        ),
        "1,3"
    );
}

/// A member of another cluster (its own initdb) is stopped by its agent, which names both
/// system identifiers; the service's leader is untouched.
#[test]
fn a_member_of_another_cluster_is_stopped_by_its_agent() {
    let e = etcd();
    e.await_healthy();
    let stranger = common::pg::Pg::start("", &[]);
    let p = Pair::new(
        "sync",
        "",
        &format!(
            "      c: {{ host: 127.0.0.1, port: {}, user: postgres, data_dir: \"{}\" }}\n",
            stranger.port,
            stranger.lab.p("pgdata").display()
        ),
    );
    let plan = std::fs::read_to_string(p.pg.lab.p("lifeboat.yaml")).unwrap();
    std::fs::write(
        p.pg.lab.p("lifeboat.yaml"),
        format!("{plan}\ncoordinator:\n  etcd: [\"{}\"]\n", e.client),
    )
    .unwrap();
    let (_a, _b) = (agent(&p, "a"), agent(&p, "b"));
    await_event(&p, "lead", "a", 1);
    let _c = agent(&p, "c");
    let fence = await_event(&p, "fence", "c", 1);
    let why = fence["figures"]["reason"].as_str().unwrap_or_default();
    assert!(why.contains("another cluster"), "{fence}");
    assert!(why.contains("system identifier"), "{fence}");
    await_stopped_at(&stranger.lab.p("pgdata"));
    assert_eq!(p.in_recovery(p.pg.port), Some(false));
    // Stopped, and left as it is: the agents rejoin members of this cluster only.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent_events(&p, "rejoin").is_empty(),
        "a member of another cluster was rejoined:\n{}",
        logs(&p)
    );
    assert!(!alive_at(&stranger.lab.p("pgdata")));
    assert!(agent_events(&p, "resign").is_empty(), "{}", logs(&p));
}

/// Which server a connection through the endpoint on `port` reaches (its port), if any.
fn through(p: &Pair, port: u16) -> Option<String> {
    p.pg.try_sql_on(port, "postgres", "SELECT inet_server_port()")
        .ok()
}

/// Wait (20 s at most) until the endpoint on `port` reaches the server on `want`.
fn await_route(p: &Pair, port: u16, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while through(p, port) != Some(want.to_string()) {
        assert!(
            Instant::now() < deadline,
            "the endpoint on {port} does not reach {want}:\n{}",
            logs(p)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The traffic endpoint on every site (one run by site a's agent, one by `lifeboat endpoint`
/// at site b) routes to the token holder only, follows a failover, and drops its connections
/// when it cannot read etcd.
#[test]
fn site_endpoints_route_to_the_token_holder_follow_a_failover_and_drop_when_etcd_is_gone() {
    let mut e: Etcd = etcd();
    e.await_healthy();
    let (p, ea, eb) = pair_with_site_endpoints(&e.client);
    let _a = agent(&p, "a");
    let _b = spawn_logged(
        &p,
        &["agent", "--member", "b", "--no-endpoint"],
        "agent-b.log",
    );
    let _eb = spawn_logged(&p, &["endpoint", "--site", "b"], "endpoint-b.log");
    let t1 = token(&await_event(&p, "lead", "a", 1));
    await_route(&p, ea, p.pg.port);
    await_route(&p, eb, p.pg.port);
    // Writes through either site's endpoint land on the primary.
    for (i, port) in [ea, eb].into_iter().enumerate() {
        p.pg.try_sql_on(
            port,
            "postgres",
            &format!("INSERT INTO w VALUES ({})", i + 1),
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    // The primary crashes: both endpoints follow the new token holder.
    p.signal_server("pgdata", libc::SIGKILL);
    let t2 = token(&await_event(&p, "promote", "b", 1));
    assert!(t2 > t1);
    await_route(&p, ea, p.sport);
    await_route(&p, eb, p.sport);
    p.pg.try_sql_on(ea, "postgres", "INSERT INTO w VALUES (3)")
        .unwrap();
    assert_eq!(
        p.pg.sql_on(p.sport, "postgres", "SELECT count(*) FROM w"),
        "3"
    );
    // The endpoints said which token they route under.
    let ep = std::fs::read_to_string(p.pg.lab.p("endpoint-b.log")).unwrap();
    assert!(
        ep.lines()
            .any(|l| l.contains("endpoint_route") && l.contains(&format!("\"token\":{t2}"))),
        "{ep}"
    );

    // etcd lost: each endpoint drops its connections and refuses new ones (its leader's agent
    // stops the server too, before its lease could run out).
    e.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ep = std::fs::read_to_string(p.pg.lab.p("endpoint-b.log")).unwrap();
        let a = std::fs::read_to_string(p.pg.lab.p("agent-a.log")).unwrap();
        let dropped = |l: &str| l.contains("endpoint_route") && l.contains("etcd cannot be read");
        if ep.lines().any(dropped) && a.lines().any(dropped) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the endpoints kept routing:\n{}",
            logs(&p)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(through(&p, ea), None);
    assert_eq!(through(&p, eb), None);
}

/// libfaketime: one agent's wall clock stepped while its monotonic clock runs on, as a stepped
/// system clock (NTP, a person with `date -s`) leaves CLOCK_MONOTONIC alone.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// An agent for `site` whose wall clock is the real one plus the offset in `clock-SITE` (e.g.
/// `+10s`), read again every second.
fn agent_with_clock(p: &Pair, site: &str) -> Daemon {
    let clock = p.pg.lab.p(&format!("clock-{site}"));
    std::fs::write(&clock, "+0\n").unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p.pg.lab.p(&format!("agent-{site}.log")))
        .unwrap();
    let mut c = p.pg.cmd(&["agent", "--member", site]);
    c.env("LD_PRELOAD", FAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        .env("FAKETIME_CACHE_DURATION", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(Stdio::null())
        .stderr(log);
    Daemon(c.spawn().unwrap())
}

#[test]
fn wall_clocks_stepped_by_ten_seconds_on_the_members_change_nothing() {
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "libfaketime (Debian faketime) is installed by scripts/install-deps.sh"
    );
    let e: Etcd = etcd();
    e.await_healthy();
    let p = pair(&e.client);
    let (_a, _b) = (agent_with_clock(&p, "a"), agent_with_clock(&p, "b"));
    let t1 = token(&await_event(&p, "lead", "a", 1));
    std::thread::sleep(Duration::from_millis(1500));
    let step = |site: &str, by: &str| {
        std::fs::write(p.pg.lab.p(&format!("clock-{site}")), format!("{by}\n")).unwrap();
    };
    let mut v = 0;
    for (a, b) in [("+10s", "-10s"), ("-10s", "+10s"), ("+0", "+10s")] {
        step("a", a);
        step("b", b);
        // Longer than the lease: each side's clock read stepped at least once meanwhile.
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            v += 1;
            p.pg.try_sql_on(
                p.pg.port,
                "postgres",
                &format!("INSERT INTO w VALUES ({v})"),
            )
            .unwrap_or_else(|e| panic!("write {v} with clocks at a {a}, b {b}: {e}\n{}", logs(&p)));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for what in ["fence", "resign", "promote"] {
        assert!(agent_events(&p, what).is_empty(), "{what}:\n{}", logs(&p));
    }
    assert_eq!(agent_events(&p, "lead").len(), 1, "{}", logs(&p));
    // The agents still act on a real fault: a crash fails over with a larger token — b's
    // clock still 10 s ahead, as the time it records shows (so the steps did reach it).
    p.signal_server("pgdata", libc::SIGKILL);
    let promote = await_event(&p, "promote", "b", 1);
    assert!(token(&promote) > t1, "{promote}");
    let at: jiff::Timestamp = promote["time"].as_str().unwrap().parse().unwrap();
    let ahead = at.duration_since(jiff::Timestamp::now()).as_secs_f64();
    assert!(ahead > 5.0, "b's clock is not ahead ({ahead} s): {promote}");
    assert_eq!(
        p.pg.sql_on(p.sport, "postgres", "SELECT count(*) FROM w"),
        v.to_string()
    );
}

#[test]
fn a_required_watchdog_that_cannot_be_used_stops_the_agent_at_start_and_touches_nothing() {
    let e: Etcd = etcd();
    e.await_healthy();
    let p = pair_with(
        &e.client,
        "",
        "  rejoin: manual\n  watchdog: required\n  watchdog_device: /dev/null\n",
    );
    let out = p.pg.cmd(&["agent", "--member", "a"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("coordinator.watchdog is required")
            && err.contains("/dev/null is not a watchdog")
            && err.contains("no server was touched"),
        "{err}"
    );
    assert_eq!(p.in_recovery(p.pg.port), Some(false));
    assert!(agent_events(&p, "lead").is_empty());
    // `auto`: the agent says it runs without one, and leads.
    let plan = p.pg.lab.p("lifeboat.yaml");
    let text = std::fs::read_to_string(&plan).unwrap();
    std::fs::write(&plan, text.replace("watchdog: required", "watchdog: auto")).unwrap();
    let _a = agent(&p, "a");
    await_event(&p, "lead", "a", 1);
    let log = std::fs::read_to_string(p.pg.lab.p("agent-a.log")).unwrap();
    assert!(log.contains("agent_watchdog_unavailable"), "{log}");
}

/// `q` on `port`; whether it was acknowledged within `limit` (a commit waiting for a
/// synchronous standby is not).
fn acked_within(p: &Pair, q: &str, limit: Duration) -> bool {
    let mut child =
        p.pg.psql_cmd(p.pg.port, "postgres", q)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_synchronous_standby_that_stops_answering_is_dropped_so_commits_go_on_and_is_taken_back() {
    let e: Etcd = etcd();
    e.await_healthy();
    let p = pair(&e.client);
    let (_a, _b) = (agent(&p, "a"), agent(&p, "b"));
    await_event(&p, "lead", "a", 1);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(acked_within(
        &p,
        "INSERT INTO w VALUES (1)",
        Duration::from_secs(5)
    ));
    // b's server frozen: its connection to a stays open (a still sees it streaming, for a
    // minute by default), and a commit waits for it. a's agent finds b's server not
    // answering, empties the list of possible successors in etcd, and drops b.
    p.signal_server("standby", libc::SIGSTOP);
    let acked = acked_within(&p, "INSERT INTO w VALUES (2)", Duration::from_secs(20));
    assert!(
        acked,
        "a commit still waits for the frozen standby:\n{}",
        logs(&p)
    );
    let dropped = agent_events(&p, "synchronous")
        .into_iter()
        .find(|e| e["figures"]["now"].is_null() && e["figures"]["was"] == "b");
    assert!(dropped.is_some(), "{}", logs(&p));
    // b back: it streams again and is made synchronous again.
    p.signal_server("standby", libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent_events(&p, "synchronous")
        .iter()
        .any(|e| e["figures"]["now"] == "b")
    {
        assert!(Instant::now() < deadline, "b not taken back:\n{}", logs(&p));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(acked_within(
        &p,
        "INSERT INTO w VALUES (3)",
        Duration::from_secs(5)
    ));
    // Every write reached b (replayed there soon after).
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.pg.sql_on(p.sport, "postgres", "SELECT count(*) FROM w") != "3" {
        assert!(Instant::now() < deadline, "b lacks writes:\n{}", logs(&p));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(e: &Etcd, sig: i32) {
    // SAFETY: kill(2) on the test's own etcd.
    unsafe { libc::kill(e.child.id() as i32, sig) };
}

#[test]
fn failsafe_keeps_the_primary_while_every_member_confirms_it_and_stops_it_when_one_does_not() {
    let e: Etcd = etcd();
    e.await_healthy();
    let (fa, fb, eb) = (free_port(), free_port(), free_port());
    let p = pair_with(
        &e.client,
        &format!("site_listen: {{ b: \"127.0.0.1:{eb}\" }},"),
        &format!(
            "  rejoin: manual\n  failsafe:\n    listen: {{ a: \"127.0.0.1:{fa}\", b: \"127.0.0.1:{fb}\" }}\n    key_file: failsafe.key\n"
        ),
    );
    std::fs::write(
        p.pg.lab.p("failsafe.key"),
        "a secret every agent of this service shares\n",
    )
    .unwrap();
    // b's agent runs b's endpoint.
    let (_a, mut b) = (agent(&p, "a"), agent(&p, "b"));
    let t1 = token(&await_event(&p, "lead", "a", 1));
    await_route(&p, eb, p.pg.port);
    std::thread::sleep(Duration::from_millis(1500));
    let mut acked = 0;
    let mut write = |port: u16, p: &Pair| {
        acked += 1;
        p.pg.try_sql_on(port, "postgres", &format!("INSERT INTO w VALUES ({acked})"))
            .unwrap_or_else(|e| panic!("write {acked} through port {port}: {e}\n{}", logs(p)));
    };
    write(p.pg.port, &p);

    // etcd frozen: nobody reaches it. a's agent cannot renew; b's agent confirms it, so a's
    // server stays writable past two lease times — directly and through b's endpoint, which
    // asks a's agent since it cannot read etcd either.
    signal(&e, libc::SIGSTOP);
    let fs = await_event(&p, "failsafe", "a", 1);
    assert_eq!(fs["outcome"], "ok", "{fs}");
    assert_eq!(token(&fs), t1);
    std::thread::sleep(Duration::from_secs(7));
    assert!(agent_events(&p, "fence").is_empty(), "{}", logs(&p));
    assert_eq!(p.in_recovery(p.pg.port), Some(false));
    assert_eq!(p.in_recovery(p.sport), Some(true), "b must not promote");
    write(p.pg.port, &p);
    write(eb, &p);
    let ep = std::fs::read_to_string(p.pg.lab.p("agent-b.log")).unwrap();
    assert!(
        ep.contains("failsafe_pledged") && ep.contains("endpoint_failsafe"),
        "{ep}"
    );

    // etcd back: a's lease ran out in it meanwhile; a takes the key back with a new token (b
    // promised not to campaign), and b's endpoint routes to it under that token.
    signal(&e, libc::SIGCONT);
    let relead = await_event(&p, "lead", "a", 2);
    let t2 = token(&relead);
    assert!(t2 > t1, "{relead}");
    assert!(
        relead["figures"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fail-safe")),
        "{relead}"
    );
    assert!(agent_events(&p, "promote").is_empty(), "{}", logs(&p));
    await_route(&p, eb, p.pg.port);
    write(eb, &p);
    std::thread::sleep(Duration::from_millis(1500));

    // Frozen again, and b's agent gone: nobody confirms a any more, so its server is stopped
    // before its lease could run out, as without fail-safe.
    signal(&e, libc::SIGSTOP);
    b.kill_now();
    let fence = await_event(&p, "fence", "a", 1);
    assert_eq!(fence["outcome"], "ok", "{fence}");
    await_stopped(&p, "pgdata");
    assert!(
        agent_events(&p, "failsafe")
            .iter()
            .any(|e| e["outcome"] == "refused"
                && e["figures"]["error"]
                    .as_str()
                    .is_some_and(|w| w.contains('b'))),
        "{}",
        logs(&p)
    );
    // Every acknowledged write is on b (the synchronous standby).
    assert_eq!(
        p.pg.sql_on(p.sport, "postgres", "SELECT count(*) FROM w"),
        acked.to_string()
    );
    signal(&e, libc::SIGCONT);
}

/// Acknowledged writes through site a's endpoint, numbered from `from`; the ones acknowledged.
fn write_through(p: &Pair, port: u16, from: u32, n: u32) -> Vec<u32> {
    (from..from + n)
        .filter(|v| {
            p.pg.try_sql_on(port, "postgres", &format!("INSERT INTO w VALUES ({v})"))
                .is_ok()
        })
        .collect()
}

/// Wait (30 s at most) for a line of `log` (in the lab) containing every one of `parts`.
fn await_line(p: &Pair, log: &str, parts: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(p.pg.lab.p(log)).unwrap_or_default();
        if text.lines().any(|l| parts.iter().all(|x| l.contains(x))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no line with {parts:?} in {log}:\n{}",
            logs(p)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One incident after another, with nobody at the keyboard: the primary crashes, the standby
/// takes over, the old primary is rewound and made the new one's synchronous standby by its
/// agent; then the new primary crashes and the same happens the other way. Every write
/// acknowledged through the endpoint survives both failovers, and each leader's token is
/// larger than the one before.
#[test]
fn failover_rejoin_failover_rejoin_with_every_acknowledged_write() {
    let e = etcd();
    e.await_healthy();
    let ea = free_port();
    let p = pair_with(
        &e.client,
        &format!("site_listen: {{ a: \"127.0.0.1:{ea}\" }},"),
        "",
    );
    // pg_rewind needs hint bits in the WAL (or data checksums) on both.
    p.pg.sql("ALTER SYSTEM SET wal_log_hints = on");
    p.pg.pg_ctl(&["restart", "-m", "fast", "-w", "-l", "pg.log"]);
    p.pg.sql_on(p.sport, "postgres", "ALTER SYSTEM SET wal_log_hints = on");
    let r = p.pg.tool(
        "pg_ctl",
        &[
            "-D",
            "standby",
            "-l",
            "standby.log",
            "restart",
            "-m",
            "fast",
            "-w",
        ],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (_a, _b) = (agent(&p, "a"), agent(&p, "b"));
    let t1 = token(&await_event(&p, "lead", "a", 1));
    await_route(&p, ea, p.pg.port);
    let mut acked = write_through(&p, ea, 1, 20);
    assert_eq!(acked.len(), 20);
    await_line(
        &p,
        "agent-a.log",
        &["agent_sync_published", "\"synchronous\":[\"b\"]"],
    );

    // First incident: a crashes. b leads; a is rewound and follows b, synchronously.
    p.signal_server("pgdata", libc::SIGKILL);
    let t2 = token(&await_event(&p, "promote", "b", 1));
    assert!(t2 > t1);
    let rejoin = await_event(&p, "rejoin", "a", 1);
    assert_eq!(rejoin["outcome"], "ok", "{rejoin}\n{}", logs(&p));
    assert_eq!(rejoin["figures"]["leader"], "b", "{rejoin}");
    assert_eq!(rejoin["figures"]["method"], "pg_rewind", "{rejoin}");
    assert_eq!(p.in_recovery(p.pg.port), Some(true));
    let sync = await_event(&p, "synchronous", "b", 1);
    assert_eq!(sync["figures"]["now"], "a", "{sync}");
    await_line(
        &p,
        "agent-b.log",
        &["agent_sync_published", "\"synchronous\":[\"a\"]"],
    );
    await_route(&p, ea, p.sport);
    let more = write_through(&p, ea, 21, 20);
    assert_eq!(more.len(), 20, "{}", logs(&p));
    acked.extend(more);

    // Second incident: b crashes. a leads again with a larger token; b is rewound and follows.
    p.signal_server("standby", libc::SIGKILL);
    let t3 = token(&await_event(&p, "promote", "a", 1));
    assert!(t3 > t2);
    let rejoin = await_event(&p, "rejoin", "b", 1);
    assert_eq!(rejoin["outcome"], "ok", "{rejoin}\n{}", logs(&p));
    assert_eq!(rejoin["figures"]["leader"], "a", "{rejoin}");
    assert_eq!(rejoin["figures"]["method"], "pg_rewind", "{rejoin}");
    let sync = await_event(&p, "synchronous", "a", 1);
    assert_eq!(sync["figures"]["now"], "b", "{sync}");
    await_route(&p, ea, p.pg.port);
    acked.extend(write_through(&p, ea, 41, 5));
    assert_eq!(acked.len(), 45);

    // Every acknowledged write is on the primary, and on its synchronous standby.
    let want = acked.len().to_string();
    assert_eq!(
        p.pg.sql_on(p.pg.port, "postgres", "SELECT count(*) FROM w"),
        want
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while p
        .pg
        .try_sql_on(p.sport, "postgres", "SELECT count(*) FROM w")
        .ok()
        != Some(want.clone())
    {
        assert!(
            Instant::now() < deadline,
            "b did not catch up:\n{}",
            logs(&p)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(p.in_recovery(p.sport), Some(true));
}
