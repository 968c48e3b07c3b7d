//! `lifeboat demo`: the whole backup story on an embedded default, no servers to set up.
//!
//! Makes a scratch directory with sample data, a plan with a `paths` and a `command` service,
//! two local repositories (primary and a "cross-region" copy), then runs the real commands:
//! plan check, repo init, backup (with copy), change data, backup again (dedup), snapshots,
//! verify --read-data, restore and a byte-for-byte comparison, forget --dry-run, audit verify.
//! Where PostgreSQL is installed, it goes on with a real cluster archiving through
//! `lifeboat wal push`: a base backup, a "bad migration" (DROP TABLE), `wal verify`,
//! point-in-time recovery to just before the drop (started and counted), and `verify --restore`
//! whose SQL check catches the dropped table at the latest point. Then it builds a two-site lab
//! (`lifeboat lab up`) and runs two drills on it — `kill-primary` and `corrupt-data` — whose
//! measured RTO, RPO and lost writes stand beside the tier's objectives, and takes it down.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

#[derive(clap::Args)]
pub struct Args {
    /// Where to build the demo (default: a new directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the directory afterwards.
    #[arg(long)]
    keep: bool,
}

const PLAN: &str = r#"# The demo plan lifeboat demo runs.
name: demo
tiers:
  standard: { rpo: 1h, rto: 4h }
  batch:    { rpo: 24h, rto: 8h }
sites: [east, west]
services:
  app-config: { kind: paths, tier: standard, site: east, paths: [data] }
  inventory:  { kind: command, tier: batch, command: "ls -lR data | sort", filename: inventory.txt }
repositories:
  main:    { url: repo-main, key_file: demo.key }
  dr-copy: { url: repo-dr,   key_file: demo.key }
backups:
  app-config:
    service: app-config
    repository: main
    retention: { last: 3, daily: 7, weekly: 4, monthly: 12, yearly: 7 }
    copy_to: [dr-copy]
  inventory: { service: inventory, repository: main, retention: { last: 5 } }
"#;

fn step(title: &str) {
    println!("\n== {title}");
}

fn lifeboat(dir: &Path, args: &[&str]) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("finding the lifeboat binary")?;
    println!("$ lifeboat {}", args.join(" "));
    let status = Command::new(exe)
        .args(args)
        .current_dir(dir)
        .env("LIFEBOAT_PROGRESS", "0")
        .env_remove("LIFEBOAT_PLAN")
        .env_remove("LIFEBOAT_STATE_DIR")
        .status()
        .context("running lifeboat")?;
    Ok(status.code().unwrap_or(1))
}

fn must(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let code = lifeboat(dir, args)?;
    if code != 0 {
        bail!("`lifeboat {}` exited with {code}", args.join(" "));
    }
    Ok(())
}

/// Deterministic sample data: text that compresses, bytes that do not.
fn make_data(root: &Path) -> anyhow::Result<()> {
    let data = root.join("data");
    std::fs::create_dir_all(data.join("conf.d"))?;
    for i in 0..50 {
        let text = format!(
            "# service {i}\nlisten = 0.0.0.0:{}\nworkers = {}\n",
            8000 + i,
            i % 8 + 1
        )
        .repeat(40);
        std::fs::write(data.join("conf.d").join(format!("svc-{i:02}.conf")), text)?;
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut blob = vec![0u8; 3 << 20];
    for b in blob.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(data.join("state.bin"), &blob)?;
    Ok(())
}

fn same_tree(a: &Path, b: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(a)? {
        let entry = entry?;
        let other = b.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            n += same_tree(&entry.path(), &other)?;
        } else {
            if std::fs::read(entry.path())?
                != std::fs::read(&other).with_context(|| format!("{} missing", other.display()))?
            {
                bail!("{} differs after restore", other.display());
            }
            n += 1;
        }
    }
    Ok(n)
}

pub fn run(_cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let dir = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("lifeboat-demo-{}", std::process::id()))
    });
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} is not empty; pick another --dir", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    let result = tour(&dir);
    if a.keep || result.is_err() {
        println!("\n(demo directory kept: {})", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result.map(|_| 0)
}

fn tour(dir: &Path) -> anyhow::Result<()> {
    step("1. a plan: two services, two repositories, retention, a cross-region copy");
    std::fs::write(dir.join("lifeboat.yaml"), PLAN)?;
    std::fs::write(dir.join("demo.key"), "demo-only-key-do-not-reuse\n")?;
    make_data(dir)?;
    must(dir, &["plan", "check"])?;

    step("2. a mistake in the plan is named by line, column and field");
    std::fs::write(
        dir.join("broken.yaml"),
        PLAN.replace("tier: batch", "tier: gold")
            .replace("last: 5", "last: five"),
    )?;
    lifeboat(dir, &["--plan", "broken.yaml", "plan", "check"])?;

    step("3. repositories (restic format v2, encrypted, zstd)");
    must(dir, &["repo", "init"])?;

    step("4. back up every job; the config is copied to the DR repository");
    must(dir, &["backup"])?;

    step("5. change 1 file and back up again: only the change is stored");
    std::fs::write(
        dir.join("data/conf.d/svc-07.conf"),
        "listen = 0.0.0.0:9999\n",
    )?;
    must(dir, &["backup", "app-config"])?;
    must(dir, &["snapshots"])?;

    step("6. verify: fresh within the tier RPO, retained, and every byte decrypts and matches");
    must(dir, &["verify", "--read-data"])?;

    if let Ok(out) = Command::new("restic")
        .args([
            "--repo",
            "repo-main",
            "--password-file",
            "demo.key",
            "--no-cache",
            "check",
        ])
        .current_dir(dir)
        .output()
    {
        step("6b. the same repository, checked by restic itself (restic format, not a lookalike)");
        println!("$ restic --repo repo-main check");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            bail!(
                "restic check failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    step("7. restore the latest config snapshot and compare byte for byte");
    must(
        dir,
        &[
            "restore",
            "latest",
            "--job",
            "app-config",
            "--target",
            "restored",
        ],
    )?;
    let restored = dir
        .join("restored")
        .join(dir.strip_prefix("/").unwrap_or(dir))
        .join("data");
    let n = same_tree(&dir.join("data"), &restored)?;
    println!("restored tree matches the source: {n} files identical");

    step("8. retention: what would go, and why");
    must(dir, &["forget", "--dry-run"])?;

    step("9. the evidence log: every act, hash-chained");
    must(dir, &["audit", "list"])?;
    must(dir, &["audit", "verify"])?;
    match lifeboat_pg::detect_bin_dir() {
        bin if bin.join("initdb").exists() => {
            postgres_tour(&dir.join("pg"), &bin)?;
            drill_tour(dir)?;
        }
        _ => println!(
            "\n(PostgreSQL is not installed here: the point-in-time recovery part is skipped)"
        ),
    }
    println!("\nDone. Every figure above was measured just now.");
    Ok(())
}

const PG_PLAN: &str = r#"# The PostgreSQL part of the demo.
name: demo-pg
tiers:
  critical: { rpo: 5m, rto: 15m }
sites: [east]
services:
  shop-db:
    kind: postgres
    tier: critical
    members:
      east: { host: 127.0.0.1, port: PORT, user: postgres, data_dir: pgdata }
    checks: ["SELECT to_regclass('orders') IS NOT NULL"]
repositories:
  main: { url: repo, key_file: demo.key }
backups:
  shop-db-base: { service: shop-db, retention: { daily: 7 } }
"#;

/// Takes the lab down however the tour ends.
struct LabGuard(PathBuf);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = lifeboat_drill::lab::down(&self.0);
    }
}

/// Drills on a two-site lab: a crash of the primary under writes, then a bad migration
/// undone by a point-in-time restore; each measured against the tier's objectives.
fn drill_tour(dir: &Path) -> anyhow::Result<()> {
    let lab = dir.join("lab");
    let plan = lab.join("lifeboat.yaml");
    let plan_s = plan.display().to_string();
    step("16. a two-site lab: primary (east), synchronous standby (west), a repository per site, the daemon");
    let guard = LabGuard(lab.clone());
    must(dir, &["lab", "up", "--dir", &lab.display().to_string()])?;
    must(dir, &["--plan", &plan_s, "snapshots"])?;

    step("17. drill: the primary's processes are killed while clients write through the endpoint");
    must(dir, &["--plan", &plan_s, "drill", "run", "kill-primary"])?;

    step("18. drill: a bad migration drops a table; restored to the instant before it");
    must(dir, &["--plan", &plan_s, "drill", "run", "corrupt-data"])?;

    step("19. the objectives, measured: what `lifeboat status` shows per service");
    must(dir, &["--plan", &plan_s, "status"])?;
    let reports = lab.join(".lifeboat/drill/reports");
    let kept = dir.join("reports");
    std::fs::create_dir_all(&kept)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&reports)?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in &files {
        if f.extension().is_some_and(|x| x == "md") {
            must(
                dir,
                &[
                    "--plan",
                    &plan_s,
                    "audit",
                    "verify",
                    "--report",
                    &f.display().to_string(),
                ],
            )?;
        }
        // The lab goes; its reports stay with the demo directory.
        std::fs::copy(f, kept.join(f.file_name().unwrap_or_default()))?;
    }
    println!(
        "reports (Markdown, a self-contained HTML page with the writes over time, JSON): {}",
        kept.display()
    );

    step("20. the lab comes down: processes, network namespaces, ports and files");
    must(dir, &["lab", "down", "--dir", &lab.display().to_string()])?;
    drop(guard);
    Ok(())
}

/// uid/gid of `postgres` when running as root (PostgreSQL refuses to run as root).
fn pg_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    lifeboat_pg::user_ids("postgres")
}

fn as_pg(c: &mut Command, dir: &Path) {
    use std::os::unix::process::CommandExt;
    c.current_dir(dir)
        .env("LIFEBOAT_PROGRESS", "0")
        .env("HOME", dir)
        .env_remove("LIFEBOAT_PLAN")
        .env_remove("LIFEBOAT_STATE_DIR");
    if let Some((uid, gid)) = pg_user() {
        c.uid(uid).gid(gid);
    }
}

fn pg_tool(dir: &Path, bin: &Path, tool: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut c = Command::new(bin.join(tool));
    c.args(args);
    as_pg(&mut c, dir);
    let out = c.output().with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn lifeboat_pg(dir: &Path, args: &[&str]) -> anyhow::Result<i32> {
    let exe = dir.join("lifeboat");
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a.to_string()
            }
        })
        .collect();
    println!("$ lifeboat {}", shown.join(" "));
    let mut c = Command::new(exe);
    c.args(args);
    as_pg(&mut c, dir);
    Ok(c.status().context("running lifeboat")?.code().unwrap_or(1))
}

fn must_pg(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let code = lifeboat_pg(dir, args)?;
    if code != 0 {
        bail!("`lifeboat {}` exited with {code}", args.join(" "));
    }
    Ok(())
}

/// Stops the demo's servers however the tour ends.
struct Servers<'a>(&'a Path, &'a Path, Vec<&'static str>);

impl Drop for Servers<'_> {
    fn drop(&mut self) {
        for d in &self.2 {
            lifeboat_pg::tool::stop_restored(&self.1.join("pg_ctl"), &self.0.join(d));
        }
    }
}

/// The classic recovery: "restore the database to 14:03, before the bad migration".
fn postgres_tour(dir: &Path, bin: &Path) -> anyhow::Result<()> {
    step("10. PostgreSQL: a real cluster whose archive_command is `lifeboat wal push`");
    std::fs::create_dir_all(dir)?;
    let port = lifeboat_protect::pitr::free_port()?;
    std::fs::write(
        dir.join("lifeboat.yaml"),
        PG_PLAN.replace("PORT", &port.to_string()),
    )?;
    std::fs::write(dir.join("demo.key"), "demo-only-key-do-not-reuse\n")?;
    if let Some((uid, gid)) = pg_user() {
        lifeboat_pg::chown_tree(dir, uid, gid)?;
    }
    // PostgreSQL runs lifeboat (archive_command, restore_command) as its own user, who may not
    // reach the build directory: link (or copy) the binary into the demo directory.
    let exe = dir.join("lifeboat");
    let built = std::env::current_exe()?;
    if std::fs::hard_link(&built, &exe).is_err() {
        std::fs::copy(&built, &exe)?;
    }
    pg_tool(
        dir,
        bin,
        "initdb",
        &["-D", "pgdata", "-A", "trust", "-U", "postgres"],
    )?;
    let conf = format!(
        "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
         wal_level = replica\narchive_mode = on\n\
         archive_command = '{} --plan {} wal push shop-db %p'\n",
        exe.display(),
        dir.join("lifeboat.yaml").display()
    );
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("pgdata/postgresql.conf"))?
        .write_all(conf.as_bytes())?;
    println!(
        "archive_command = 'lifeboat --plan {}/lifeboat.yaml wal push shop-db %p'",
        dir.display()
    );
    pg_tool(
        dir,
        bin,
        "pg_ctl",
        &["-D", "pgdata", "-l", "pg.log", "-w", "start"],
    )?;
    let mut servers = Servers(dir, bin, vec!["pgdata"]);
    let port_s = port.to_string();
    let sql = |p: &str, q: &str| {
        pg_tool(
            dir,
            bin,
            "psql",
            &[
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                p,
                "-U",
                "postgres",
                "-Atq",
                "-c",
                q,
            ],
        )
    };
    sql(&port_s, "CREATE TABLE orders(id serial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp(), item text); INSERT INTO orders(item) SELECT 'item-' || i FROM generate_series(1, 5000) i")?;
    must_pg(dir, &["repo", "init"])?;

    step("11. a base backup (pg_basebackup, fast checkpoint) into the same encrypted repository");
    must_pg(dir, &["backup", "shop-db-base"])?;

    step("12. more orders arrive; then a bad migration drops the table");
    sql(
        &port_s,
        "INSERT INTO orders(item) SELECT 'late-' || i FROM generate_series(1, 250) i",
    )?;
    let before = sql(
        &port_s,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    sql(&port_s, "DROP TABLE orders")?;
    println!("orders dropped just after {before}");
    let seg = sql(&port_s, "SELECT pg_walfile_name(pg_switch_wal())")?;
    for _ in 0..200 {
        if sql(
            &port_s,
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        )? >= seg
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    step("13. what the archive can recover: timelines, gaps, the window");
    must_pg(dir, &["wal", "verify"])?;

    step("14. point-in-time recovery to just before the drop, started on a new port");
    let port2 = lifeboat_protect::pitr::free_port()?;
    servers.2.push("restored");
    must_pg(
        dir,
        &[
            "restore",
            "shop-db",
            "--to",
            &before,
            "--target",
            "restored",
            "--start",
            &port2.to_string(),
        ],
    )?;
    let n = sql(&port2.to_string(), "SELECT count(*) FROM orders")?;
    println!("orders in the restored database: {n} (5000 + 250 late ones)");

    step("15. prove the latest recovery point in a sandbox: the plan's check catches the dropped table");
    let code = lifeboat_pg(dir, &["verify", "--restore", "shop-db"])?;
    println!(
        "(exit {code}: at the latest point `orders` is gone, so the check fails — as it should)"
    );
    drop(servers);
    must_pg(dir, &["audit", "list"])?;
    Ok(())
}
