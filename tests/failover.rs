//! `lifeboat serve` against a real primary and a real synchronous streaming standby: kill -9 the
//! primary, keep writing through Lifeboat's endpoint, check no acknowledged write is lost and the
//! standby took over; restart the old primary and see it fenced; stop and restart the daemon and
//! see it keep its state.

mod common;
use common::pg::Pg;
use common::*;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_through(pg: &Pg, port: u16, v: i32) -> bool {
    pg.try_sql_on(port, "postgres", &format!("INSERT INTO w VALUES ({v})"))
        .is_ok()
}

#[test]
fn sync_failover_through_the_endpoint_loses_nothing_and_fences_the_old_primary() {
    let t_setup = Instant::now();
    let pg = Pg::start("", &[]);
    eprintln!("cluster up at {:?}", t_setup.elapsed());
    // A synchronous streaming standby named after its site.
    let o = pg.tool(
        "pg_basebackup",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-D",
            "standby",
            "-X",
            "stream",
            "-R",
            "--checkpoint=fast",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sport = free_port();
    pg.append_conf(
        "standby/postgresql.auto.conf",
        &format!(
            "port = {sport}\narchive_mode = off\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=b'\n",
            pg.port
        ),
    );
    let o = pg.tool(
        "pg_ctl",
        &["-D", "standby", "-l", "standby.log", "-w", "start"],
    );
    assert!(o.status.success());
    pg.sql("ALTER SYSTEM SET synchronous_standby_names = 'b'");
    pg.sql("SELECT pg_reload_conf()");
    eprintln!("standby up at {:?}", t_setup.elapsed());
    pg.sql("CREATE TABLE w(v int)");
    eprintln!("table at {:?}", t_setup.elapsed());

    let front = free_port();
    let plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml")).unwrap();
    let plan = plan
        .replace("sites: [a]", "sites: [a, b]")
        .replace(
            "data_dir: pgdata }",
            &format!("data_dir: pgdata }}\n      b: {{ host: 127.0.0.1, port: {sport}, user: postgres, data_dir: standby }}\n    replication: {{ mode: sync }}\n    failover: {{ listen: \"127.0.0.1:{front}\" }}"),
        );
    std::fs::write(pg.lab.p("lifeboat.yaml"), plan).unwrap();
    pg.chown();
    pg.ok(&["plan", "check"]);
    let start = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pg.lab.p("daemon.log"))
            .unwrap();
        Daemon(
            pg.cmd(&["serve"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    let t0 = Instant::now();
    let mut daemon = start();

    // Writes through the endpoint once the daemon routes.
    let mut acked = Vec::new();
    let mut v = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "no write went through the endpoint"
        );
        v += 1;
        if write_through(&pg, front, v) {
            acked.push(v);
        }
    }
    let s = pg.sql_on(
        pg.port,
        "postgres",
        "SELECT sync_state FROM pg_stat_replication",
    );
    assert_eq!(s, "sync");

    eprintln!("phase at {:?}", t0.elapsed());
    // kill -9 the primary and keep writing until the endpoint accepts again.
    unsafe { libc::kill(pg.postmaster_pid("pgdata"), libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no failover within 60 s");
        v += 1;
        if write_through(&pg, front, v) {
            acked.push(v);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..5 {
        v += 1;
        if write_through(&pg, front, v) {
            acked.push(v);
        }
    }
    eprintln!("phase at {:?}", t0.elapsed());
    // The standby is the primary now and holds every acknowledged write.
    assert_eq!(
        pg.sql_on(sport, "postgres", "SELECT pg_is_in_recovery()"),
        "f"
    );
    let have: Vec<i32> = pg
        .sql_on(sport, "postgres", "SELECT v FROM w ORDER BY v")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let lost: Vec<&i32> = acked.iter().filter(|a| !have.contains(a)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pg.lab.p(".lifeboat/failover/db.json")).unwrap())
            .unwrap();
    assert_eq!(state["primary"], "b", "{state}");
    assert_eq!(state["epoch"], 2, "{state}");

    eprintln!("phase at {:?}", t0.elapsed());
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
            std::fs::read_to_string(pg.lab.p("daemon.log")).unwrap_or_default()
        );
        // Its killed backends may hold shared memory for a moment: retry the start.
        if !fenced() && !running() && last_start.elapsed() > Duration::from_secs(2) {
            let _ = pg.tool("pg_ctl", &["-D", "pgdata", "start", "-l", "pg.log"]);
            last_start = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(write_through(&pg, front, 9999));
    assert_eq!(
        pg.sql_on(sport, "postgres", "SELECT count(*) FROM w WHERE v = 9999"),
        "1"
    );

    eprintln!("phase at {:?}", t0.elapsed());
    // SIGTERM: a clean exit; a restarted daemon keeps routing to b without a new failover.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let status = daemon.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    daemon = start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !write_through(&pg, front, 10000) {
        assert!(Instant::now() < deadline, "restarted daemon does not route");
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = pg.ok(&["--json", "status"]).json();
    assert_eq!(st[0]["daemon"]["primary"], "b", "{st}");
    let ev = pg.events();
    let failovers = ev.iter().filter(|e| e["command"] == "failover").count();
    assert_eq!(failovers, 1, "{ev:?}");
    assert!(ev.iter().any(|e| e["command"] == "fence"));
    drop(daemon);
    eprintln!("end at {:?}", t_setup.elapsed());
}
