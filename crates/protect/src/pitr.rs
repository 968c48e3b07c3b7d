//! Point-in-time recovery, and restores that prove themselves.
//!
//! [`restore`] picks the base backup for a target (time, LSN, restore point, or the latest
//! recoverable point), refuses targets the archive cannot reach (printing the window), restores
//! it, configures recovery (`restore_command = lifeboat wal fetch …`, the target, promote), and
//! can start the server and wait until it accepts writes. [`verify_restore`] does the same into
//! a throw-away sandbox on a free port, runs the plan's SQL checks, measures, and tears down.
//!
//! While Lifeboat drives a restored server it connects through a private Unix-socket directory
//! (mode 0700, owned by the data directory's owner) with `local` trust prepended to the
//! cluster's own pg_hba rules: only root and the owner can reach that socket, and TCP clients
//! still meet the original rules.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lifeboat_core::wal::Lsn;
use lifeboat_core::{Error, Kind};
use serde::Serialize;

use crate::pgbackup::{base_backups, BaseBackup};
use crate::wal::{archive, fmt_micros, inventory, wal_repo, window_of};
use lifeboat_context::Context;
use lifeboat_pg::{as_owner_of, chown_tree, user_ids, PgService};

#[derive(Clone, Debug, Serialize)]
pub enum Target {
    /// Unix microseconds.
    Time(i64),
    Lsn(String),
    Name(String),
    Latest,
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Time(t) => format!("time {}", fmt_micros(*t)),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Name(n) => format!("restore point `{n}`"),
            Target::Latest => "the latest recoverable point".into(),
        }
    }
}

pub struct RestoreOpts {
    pub target: Target,
    pub dest: PathBuf,
    pub force: bool,
    /// Start the server on this port and wait until it accepts writes.
    pub start: Option<u16>,
    /// Owner of the restored files when running as root. Default: the target's parent
    /// directory's owner, or `postgres`.
    pub owner: Option<String>,
    pub wait_timeout: Duration,
    /// Restore from this repository (a cross-region copy) instead of the one the service
    /// archives into: its base backups and the WAL copied there.
    pub repository: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Reached {
    pub lsn: Option<String>,
    /// The last transaction replayed (Unix microseconds), as the server logged it.
    pub last_xact_time: Option<i64>,
    /// The server's own sentence about where it stopped.
    pub stop_line: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PitrReport {
    pub service: String,
    pub repository: String,
    pub snapshot: String,
    pub target: Target,
    pub dest: String,
    pub files: u64,
    pub bytes: u64,
    pub started: bool,
    pub port: Option<u16>,
    pub reached: Option<Reached>,
    /// From the start of the restore until the server accepted a write.
    pub duration_ms: u64,
    pub warnings: Vec<String>,
}

fn refuse(msg: String, hint: &str) -> Error {
    Error::new(Kind::Input, msg).hint(hint)
}

/// Choose the base backup for a target and check that the archive reaches it.
fn plan_recovery(
    ctx: &Context,
    service: &str,
    target: &Target,
) -> Result<(BaseBackup, String, Vec<String>), Error> {
    let (a, repo) = archive(ctx, service)?;
    let store = ctx.open_repo(&repo)?;
    let backups = base_backups(&store, service)?;
    if backups.is_empty() {
        return Err(Error::new(
            Kind::Input,
            format!("no base backup of service {service} in repository {repo}"),
        )
        .hint(format!(
            "take one with `lifeboat backup JOB` (a job whose service is {service})"
        )));
    }
    let inv = inventory(ctx, &a)?;
    let window_text = |b: &BaseBackup| {
        let w = window_of(&inv, b);
        let end = w
            .reach
            .last_xact_time
            .map(fmt_micros)
            .unwrap_or_else(|| "its own end (no archived WAL after it)".into());
        let gap = w
            .reach
            .first_missing
            .map(|g| format!(", then segment {g} is missing"))
            .unwrap_or_default();
        format!("{} .. {end}{gap}", fmt_micros(b.stop_time))
    };
    let window_all = format!(
        "recoverable window of {service}: {} (base backup {}) .. newest: {}",
        fmt_micros(backups[0].stop_time),
        &backups[0].snapshot[..8],
        window_text(backups.last().expect("non-empty"))
    );
    let chosen = match target {
        Target::Time(t) => backups.iter().rev().find(|b| b.stop_time <= *t),
        Target::Lsn(l) => {
            let l: Lsn = l.parse().map_err(|e: String| Error::new(Kind::Input, e))?;
            backups.iter().rev().find(|b| b.stop_lsn <= l)
        }
        Target::Name(n) => {
            let rp = inv
                .segments
                .values()
                .flat_map(|s| s.restore_points.iter())
                .filter(|p| &p.name == n)
                .max_by_key(|p| p.time);
            let Some(rp) = rp else {
                let names: Vec<String> = inv
                    .segments
                    .values()
                    .flat_map(|s| s.restore_points.iter().map(|p| p.name.clone()))
                    .collect();
                return Err(refuse(
                    format!(
                        "no restore point `{n}` in the WAL archive of {service} (known: {})",
                        if names.is_empty() {
                            "none".into()
                        } else {
                            names.join(", ")
                        }
                    ),
                    "create one with SELECT pg_create_restore_point('NAME') on the primary",
                ));
            };
            let lsn: Lsn = rp.lsn.parse().unwrap_or_default();
            backups.iter().rev().find(|b| b.stop_lsn <= lsn)
        }
        Target::Latest => backups.last(),
    };
    let Some(b) = chosen else {
        return Err(refuse(
            format!(
                "{} is before the oldest base backup of {service} finished; {window_all}",
                target.describe()
            ),
            "choose a target inside the window",
        ));
    };
    let w = window_of(&inv, b);
    let mut warnings = Vec::new();
    let gap_note = w
        .reach
        .first_missing
        .as_ref()
        .map(|g| format!(" (replay cannot pass missing segment {g})"))
        .unwrap_or_default();
    match target {
        Target::Time(t) => {
            if w.reach.last_xact_time.is_none_or(|last| last <= *t) {
                return Err(refuse(
                    format!(
                        "{} is beyond what the archive can replay from base backup {}: the last transaction it reaches was at {}{gap_note}; {window_all}",
                        target.describe(),
                        &b.snapshot[..8],
                        w.reach.last_xact_time.map(fmt_micros).unwrap_or_else(|| "none after the backup".into()),
                    ),
                    "choose an earlier target or --latest; if the primary is alive, SELECT pg_switch_wal() archives its current segment",
                ));
            }
        }
        Target::Lsn(l) => {
            let l: Lsn = l.parse().map_err(|e: String| Error::new(Kind::Input, e))?;
            let end = w
                .reach
                .last_segment
                .as_ref()
                .and_then(|n| lifeboat_core::wal::WalFile::parse(n, inv.seg_size))
                .and_then(|f| match f {
                    lifeboat_core::wal::WalFile::Segment { segno, .. } => {
                        Some((segno + 1) * inv.seg_size)
                    }
                    _ => None,
                })
                .unwrap_or(b.stop_lsn.0);
            if l.0 >= end {
                return Err(refuse(
                    format!(
                        "{} is beyond what the archive can replay from base backup {}: replay reaches {}{gap_note}",
                        target.describe(),
                        &b.snapshot[..8],
                        Lsn(end)
                    ),
                    "choose an earlier LSN or --latest",
                ));
            }
        }
        Target::Name(n) => {
            if !w.reach.restore_points.iter().any(|p| &p.name == n) {
                return Err(refuse(
                    format!(
                        "restore point `{n}` is not reachable from base backup {}{gap_note}; {window_all}",
                        &b.snapshot[..8]
                    ),
                    "choose another target",
                ));
            }
        }
        Target::Latest => {
            if let Some(g) = &w.reach.first_missing {
                warnings.push(format!(
                    "replay stops before missing segment {g}: later archived WAL cannot be used"
                ));
            }
        }
    }
    Ok((b.clone(), repo, warnings))
}

fn sql_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Prepare a target directory: missing or empty, or emptied with `force`.
fn prepare_dest(dest: &Path, force: bool) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::new(Kind::Io, format!("preparing {}: {e}", dest.display()));
    if dest.exists() {
        let mut entries = std::fs::read_dir(dest).map_err(io)?.peekable();
        if entries.peek().is_some() {
            if !force {
                return Err(refuse(
                    format!("target directory {} is not empty", dest.display()),
                    "choose an empty directory, or pass --force to replace its contents (they are deleted)",
                ));
            }
            if dest.join("postmaster.pid").exists() {
                return Err(refuse(
                    format!(
                        "target directory {} holds a postmaster.pid: a server may be running there",
                        dest.display()
                    ),
                    "stop that server first",
                ));
            }
            for e in entries {
                let p = e.map_err(io)?.path();
                if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p).map_err(io)?;
                } else {
                    std::fs::remove_file(&p).map_err(io)?;
                }
            }
        }
    } else {
        std::fs::create_dir_all(dest).map_err(io)?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

fn owner_ids(dest: &Path, owner: Option<&str>) -> Result<Option<(u32, u32)>, Error> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    if let Some(name) = owner {
        return user_ids(name)
            .map(Some)
            .ok_or_else(|| Error::new(Kind::Input, format!("no user `{name}` on this host")));
    }
    if let Some(md) = dest.parent().and_then(|p| std::fs::metadata(p).ok()) {
        if md.uid() != 0 {
            return Ok(Some((md.uid(), md.gid())));
        }
    }
    user_ids("postgres").map(Some).ok_or_else(|| {
        Error::new(
            Kind::Input,
            "running as root and there is no `postgres` user to own the restored data directory",
        )
        .hint("pass --owner USER")
    })
}

/// A server Lifeboat started; stopped (immediate) and optionally removed when dropped.
pub struct Running {
    pub data: PathBuf,
    /// Who may be the restored cluster's superuser, tried in order (see [`connect_local`]).
    pub users: Vec<String>,
    pub socket_dir: PathBuf,
    pub port: u16,
    pg_ctl: PathBuf,
    pub remove_on_drop: bool,
    pub keep_running: bool,
}

impl Running {
    pub fn stop(&self) {
        lifeboat_pg::tool::stop_restored(&self.pg_ctl, &self.data);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.keep_running {
            self.stop();
        }
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.data);
            let _ = std::fs::remove_dir_all(&self.socket_dir);
        }
        unregister(&self.data);
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// After SIGINT/SIGTERM the teardown thread owns the process: whatever the main thread was
/// doing fails (its directory is being removed), and it must not exit first with that failure.
fn yield_to_teardown() {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

/// Sandboxes to tear down if the process is interrupted.
static LIVE: Mutex<Vec<(PathBuf, PathBuf, PathBuf, bool)>> = Mutex::new(Vec::new());

fn register(r: &Running) {
    LIVE.lock().expect("live").push((
        r.data.clone(),
        r.socket_dir.clone(),
        r.pg_ctl.clone(),
        r.remove_on_drop,
    ));
}

fn unregister(data: &Path) {
    LIVE.lock().expect("live").retain(|(d, ..)| d != data);
}

/// On SIGINT/SIGTERM: stop every server this process started and remove sandboxes, then exit
/// 130. Call once, before starting servers.
pub fn install_teardown_on_signal() {
    lifeboat_context::signals::on_termination(|| {
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!("interrupted: stopping and removing the restore sandbox");
        stop_sandboxes();
        std::process::exit(130);
    });
}

/// Stop every server this process started and remove its sandbox: the restore waiting on one
/// then fails (for callers that handle the interruption themselves, such as a drill). No
/// restore of this process writes anything after this (it is for an interrupted command).
pub fn stop_sandboxes() {
    // First no restore of this process writes again (it waits for the writes in flight), so a
    // sandbox removed below cannot be written again behind the removal.
    lifeboat_store::restore::halt();
    let live = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
    for (data, socket, pg_ctl, remove) in live {
        let r = Running {
            data: data.clone(),
            users: Vec::new(),
            socket_dir: socket,
            port: 0,
            pg_ctl,
            remove_on_drop: remove,
            keep_running: false,
        };
        drop(r);
        // A server's processes may still be ending: make sure it stays gone.
        for _ in 0..5 {
            if data.exists() {
                let _ = std::fs::remove_dir_all(&data);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if data.exists() {
            let _ = std::fs::remove_dir_all(&data);
        }
    }
}

/// The Unix-socket directory of a server this process restores and starts on `port`.
pub fn socket_dir(port: u16) -> PathBuf {
    PathBuf::from(format!("/tmp/lifeboat-{}-{port}", std::process::id()))
}

/// A TCP port free on loopback right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Parse what the server logged about where recovery stopped.
fn reached_from_log(log: &str) -> Reached {
    let mut r = Reached {
        lsn: None,
        last_xact_time: None,
        stop_line: None,
    };
    for line in log.lines() {
        if let Some(i) = line.find("recovery stopping ") {
            r.stop_line = Some(line[i..].trim().to_string());
        }
        if let Some(i) = line.find("redo done at ") {
            r.lsn = line[i + 13..].split_whitespace().next().map(str::to_string);
        }
        if let Some(i) = line.find("last completed transaction was at log time ") {
            let t = line[i + 43..].trim();
            r.last_xact_time = parse_pg_time(t);
        }
    }
    r
}

/// `2026-11-22 06:00:00.123456+00` → Unix microseconds.
/// Also `…+02`, `…+0530`, `…+05:30`, `…Z`, and `T` instead of the space. A time without an
/// offset is refused (`None`): "14:03" means different instants on different hosts.
pub fn parse_pg_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    let sign_at = |k: usize| b.len() > k && matches!(b[b.len() - k], b'+' | b'-');
    let digits = |k: usize| b[b.len() - k + 1..].iter().all(u8::is_ascii_digit);
    let fixed = if sign_at(3) && digits(3) {
        format!("{s}:00") // +HH
    } else if sign_at(5) && digits(5) {
        format!("{}:{}", &s[..s.len() - 2], &s[s.len() - 2..]) // +HHMM
    } else {
        s.to_string()
    };
    let iso = fixed.replacen(' ', "T", 1);
    iso.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_microsecond())
}

/// Restore a service to a target.
pub fn restore(ctx: &Context, service: &str, o: &RestoreOpts) -> Result<PitrReport, Error> {
    let started = Instant::now();
    let from_copy;
    let ctx = match &o.repository {
        Some(r) => {
            from_copy = crate::wal::using_repository(ctx, service, r)?;
            &from_copy
        }
        None => ctx,
    };
    let result = restore_inner(ctx, service, o, started).map(|(r, running)| {
        if let Some(mut run) = running {
            // The caller asked for a running server: leave it running.
            run.keep_running = true;
        }
        r
    });
    yield_to_teardown();
    let (outcome, figures) = match &result {
        Ok(r) => ("ok", serde_json::to_value(r).unwrap_or_default()),
        Err(e) => (
            "failed",
            serde_json::json!({"error": e.message, "target": o.target, "dest": o.dest.display().to_string()}),
        ),
    };
    ctx.record("restore", service, outcome, started, figures)?;
    result
}

fn restore_inner(
    ctx: &Context,
    service: &str,
    o: &RestoreOpts,
    started: Instant,
) -> Result<(PitrReport, Option<Running>), Error> {
    let svc =
        ctx.plan.services.get(service).ok_or_else(|| {
            Error::new(Kind::Input, format!("no service `{service}` in the plan"))
        })?;
    let pg = PgService::from_plan(service, svc, &ctx.base)?;
    let (b, repo, warnings) = plan_recovery(ctx, service, &o.target)?;
    prepare_dest(&o.dest, o.force)?;
    let store = ctx.open_repo(&repo)?;
    let sum = store.restore(&b.snapshot, Some("/pgdata"), &o.dest)?;
    configure_recovery(ctx, service, &o.dest, &o.target, o.start)?;
    let ids = owner_ids(&o.dest, o.owner.as_deref())?;
    if let Some((uid, gid)) = ids {
        chown_tree(&o.dest, uid, gid)
            .map_err(|e| Error::new(Kind::Io, format!("chown {}: {e}", o.dest.display())))?;
    }
    let mut report = PitrReport {
        service: service.into(),
        repository: repo,
        snapshot: b.snapshot.clone(),
        target: o.target.clone(),
        dest: o.dest.display().to_string(),
        files: sum.files,
        bytes: sum.bytes,
        started: false,
        port: o.start,
        reached: None,
        duration_ms: 0,
        warnings,
    };
    let mut running = None;
    if let Some(port) = o.start {
        preflight_restore_command(ctx, service, &o.dest)?;
        let run = start_server(&pg, &o.dest, port, ids, false)?;
        let reached = wait_promoted(&run, o.wait_timeout)?;
        report.started = true;
        report.reached = Some(reached);
        running = Some(run);
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok((report, running))
}

/// Write recovery settings: `recovery.signal` and lines appended to `postgresql.auto.conf`.
fn configure_recovery(
    ctx: &Context,
    service: &str,
    dest: &Path,
    target: &Target,
    port: Option<u16>,
) -> Result<(), Error> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(Kind::Internal, format!("locating lifeboat: {e}")))?;
    let fetch = format!(
        "LIFEBOAT_STATE_DIR={} {} --plan {} wal fetch {} --repo {}{} \"%f\" \"%p\"",
        sh_quote(&ctx.state_dir.display().to_string()),
        sh_quote(&exe.display().to_string()),
        sh_quote(&ctx.plan_path.display().to_string()),
        sh_quote(service),
        sh_quote(&wal_repo(ctx, service)?),
        // With a target, a damaged segment read ahead of it must not end the restore.
        if matches!(target, Target::Latest) {
            ""
        } else {
            " --has-target"
        }
    );
    // Segments prefetched for an earlier restore are not this one's to trust.
    let _ = std::fs::remove_dir_all(crate::wal::prefetch_dir(ctx, service));
    let mut conf = String::from("\n# Added by lifeboat restore\n");
    conf.push_str(&format!("restore_command = {}\n", sql_quote(&fetch)));
    match target {
        Target::Time(t) => {
            let ts = jiff::Timestamp::from_microsecond(*t)
                .map_err(|e| Error::new(Kind::Input, e.to_string()))?;
            conf.push_str(&format!(
                "recovery_target_time = '{}'\n",
                ts.strftime("%Y-%m-%d %H:%M:%S%.6f+00")
            ));
        }
        Target::Lsn(l) => conf.push_str(&format!("recovery_target_lsn = {}\n", sql_quote(l))),
        Target::Name(n) => conf.push_str(&format!("recovery_target_name = {}\n", sql_quote(n))),
        Target::Latest => {}
    }
    conf.push_str("recovery_target_action = 'promote'\nrecovery_target_timeline = 'latest'\n");
    // A restored copy must never archive into the production archive.
    conf.push_str("archive_mode = 'off'\n");
    // Nor wait for the production standbys (a primary's copy names them as synchronous: its
    // first write would hang), nor stream from a production server (a standby's copy names
    // its primary): it recovers from the archive alone.
    conf.push_str(
        "synchronous_standby_names = ''\nprimary_conninfo = ''\nprimary_slot_name = ''\n",
    );
    if let Some(p) = port {
        conf.push_str(&format!("port = {p}\n"));
    }
    let io = |e: std::io::Error| {
        Error::new(
            Kind::Io,
            format!("configuring recovery in {}: {e}", dest.display()),
        )
    };
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dest.join("postgresql.auto.conf"))
        .and_then(|mut f| f.write_all(conf.as_bytes()))
        .map_err(io)?;
    std::fs::write(dest.join("recovery.signal"), b"").map_err(io)?;
    for f in ["standby.signal", "postmaster.pid", "postmaster.opts"] {
        let _ = std::fs::remove_file(dest.join(f));
    }
    Ok(())
}

/// Run the configured `restore_command` once, as the user the server will run as, for a file
/// no archive has: it must answer "not archived" (exit 1). Anything else — the binary, the plan
/// or the key unreadable for that user — would only surface later as a failed recovery.
fn preflight_restore_command(ctx: &Context, service: &str, data: &Path) -> Result<(), Error> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(Kind::Internal, format!("locating lifeboat: {e}")))?;
    let mut c = Command::new(&exe);
    c.arg("--plan")
        .arg(&ctx.plan_path)
        .args([
            "wal",
            "fetch",
            service,
            "FFFFFFFF.history",
            "--prefetch",
            "0",
            "--repo",
            &wal_repo(ctx, service)?,
        ])
        .arg(data.join("lifeboat-preflight"))
        .env("LIFEBOAT_STATE_DIR", &ctx.state_dir)
        .current_dir(data)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    as_owner_of(&mut c, data);
    let out = c.output().map_err(|e| {
        Error::new(
            Kind::Source,
            format!("the restored server could not run {}: {e}", exe.display()),
        )
        .hint("the lifeboat binary must be executable by the data directory's owner (install it in /usr/local/bin)")
    })?;
    match out.status.code() {
        Some(0) | Some(1) => Ok(()),
        _ => Err(Error::new(
            Kind::Source,
            format!(
                "restore_command would fail for the data directory's owner: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .hint("the owner (the user PostgreSQL runs as) must be able to run lifeboat and read the plan and the repository key (or the WAL key cache in the state directory)")),
    }
}

/// Start a restored server on `port` with a private socket directory.
fn start_server(
    pg: &PgService,
    data: &Path,
    port: u16,
    ids: Option<(u32, u32)>,
    sandbox: bool,
) -> Result<Running, Error> {
    let io = |e: std::io::Error| Error::new(Kind::Io, format!("starting the server: {e}"));
    let socket_dir = socket_dir(port);
    std::fs::create_dir_all(&socket_dir).map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid)).map_err(io)?;
    }
    // Local trust through the private socket first, then the cluster's own rules.
    let own = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap_or_default();
    let hba = data.join("lifeboat_hba.conf");
    std::fs::write(
        &hba,
        format!("# Lifeboat: trust only through the private socket directory\nlocal all all trust\n{own}"),
    )
    .map_err(io)?;
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(&hba, Some(uid), Some(gid)).map_err(io)?;
    }
    let pg_ctl = pg.tool("pg_ctl");
    let mut users = vec![owner_name(data)];
    for m in pg.members.values() {
        users.push(m.user.clone().unwrap_or_else(|| "postgres".into()));
    }
    users.push("postgres".into());
    users.dedup();
    let run = Running {
        data: data.to_path_buf(),
        users,
        socket_dir: socket_dir.clone(),
        port,
        pg_ctl: pg_ctl.clone(),
        remove_on_drop: sandbox,
        keep_running: false,
    };
    register(&run);
    // A backup of a server that was itself restored carries that restore's log: this
    // recovery is judged on its own lines only.
    let log = data.join("lifeboat-recovery.log");
    let _ = std::fs::remove_file(&log);
    lifeboat_pg::tool::start_restored(&pg_ctl, data, &log, port, &socket_dir, &hba)?;
    Ok(run)
}

/// Wait until recovery ends, the server is promoted, and a write succeeds.
fn wait_promoted(run: &Running, timeout: Duration) -> Result<Reached, Error> {
    let begun = Instant::now();
    let deadline = begun + timeout;
    let log_path = run.data.join("lifeboat-recovery.log");
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Ok(mut c) = connect_local(run, "postgres", Duration::from_secs(2)) {
            if !lifeboat_pg::local_in_recovery(&mut c) {
                lifeboat_pg::local_write_probe(&mut c).map_err(|e| {
                    Error::new(
                        Kind::Source,
                        format!("the restored server was promoted but refused a write: {e}"),
                    )
                })?;
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Ok(reached_from_log(&log));
            }
        }
        let fatal = log
            .lines()
            .rfind(|l| l.contains("FATAL") || l.contains("PANIC"));
        let pid_gone = !run.data.join("postmaster.pid").exists();
        if pid_gone && (fatal.is_some() || begun.elapsed() > Duration::from_secs(10)) {
            // A damaged segment the target needed: say which, and what to do.
            if let Some(d) = log
                .lines()
                .find_map(|l| l.split_once(crate::wal::DAMAGED_MARKER))
            {
                let what =
                    d.1.split("; reported as not archived")
                        .next()
                        .unwrap_or(d.1);
                return Err(Error::new(
                    Kind::Integrity,
                    format!(
                        "the restored server stopped during recovery ({}): the target needs WAL that is damaged in the archive: {what}",
                        fatal.map(str::trim).unwrap_or("it is not running")
                    ),
                )
                .hint(format!("a target before the damaged segment can still be restored (`lifeboat wal verify --read-data` shows the window it cuts); its log is {}", log_path.display())));
            }
            return Err(Error::new(
                Kind::Source,
                format!(
                    "the restored server stopped during recovery: {}",
                    fatal
                        .map(str::trim)
                        .unwrap_or("it is not running (no postmaster.pid)")
                ),
            )
            .hint(format!("its log is {}", log_path.display())));
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                Kind::Source,
                format!("recovery did not finish within {}s", timeout.as_secs()),
            )
            .hint(format!("its log is {}", log_path.display())));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A connection to a server this process started, through its private socket, as the
/// cluster's superuser: normally the OS user that owns it, else a role the plan connects with
/// (a cluster made with `initdb -U postgres` by another user), else `postgres`.
pub fn connect_local(
    run: &Running,
    dbname: &str,
    timeout: Duration,
) -> Result<postgres::Client, String> {
    let mut last = "no role to connect as".to_string();
    for user in &run.users {
        let mut cfg = postgres::Config::new();
        cfg.host_path(&run.socket_dir)
            .port(run.port)
            .user(user)
            .dbname(dbname)
            .connect_timeout(timeout);
        match cfg.connect(postgres::NoTls) {
            Ok(c) => return Ok(c),
            // No such role: the next candidate.
            Err(e)
                if e.as_db_error().is_some_and(|d| {
                    d.code() == &postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                }) =>
            {
                last = lifeboat_pg::db_error_text(&e)
            }
            Err(e) => return Err(lifeboat_pg::db_error_text(&e)),
        }
    }
    Err(last)
}

/// The database superuser of a restored cluster is normally the OS user that owns it.
fn owner_name(data: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(data).map(|m| m.uid()).unwrap_or(0);
    // SAFETY: getpwuid returns static storage or null; copied out immediately.
    unsafe {
        let pw = libc::getpwuid(uid);
        if pw.is_null() {
            return "postgres".into();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub sql: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SandboxReport {
    pub service: String,
    pub repository: String,
    pub snapshot: String,
    pub ok: bool,
    pub error: Option<String>,
    /// Restore + replay + promotion, until a write succeeded: evidence for RTO.
    pub restore_ms: u64,
    /// Age of the newest replayed transaction when the check ran: evidence for RPO.
    pub data_age_ms: Option<u64>,
    pub reached: Option<Reached>,
    pub checks: Vec<CheckResult>,
    pub rto_ms: Option<u64>,
    pub rpo_ms: Option<u64>,
}

/// `lifeboat verify --restore`: restore the latest recovery point into a sandbox, start it,
/// run the plan's checks, measure, tear down, record.
pub fn verify_restore(ctx: &Context, service: &str) -> Result<SandboxReport, Error> {
    let started = Instant::now();
    let svc =
        ctx.plan.services.get(service).ok_or_else(|| {
            Error::new(Kind::Input, format!("no service `{service}` in the plan"))
        })?;
    let pg = PgService::from_plan(service, svc, &ctx.base)?;
    let tier = ctx.plan.tiers.get(svc.tier());
    let mut report = SandboxReport {
        service: service.into(),
        repository: wal_repo(ctx, service).unwrap_or_default(),
        snapshot: String::new(),
        ok: false,
        error: None,
        restore_ms: 0,
        data_age_ms: None,
        reached: None,
        checks: Vec::new(),
        rto_ms: tier.map(|t| t.rto.0.as_millis() as u64),
        rpo_ms: tier.map(|t| t.rpo.0.as_millis() as u64),
    };
    let r = (|| -> Result<(), Error> {
        let sandbox_root = ctx.state_dir.join("sandbox");
        std::fs::create_dir_all(&sandbox_root).map_err(|e| {
            Error::new(
                Kind::Io,
                format!("creating {}: {e}", sandbox_root.display()),
            )
        })?;
        let data = sandbox_root.join(format!("{service}-{}", std::process::id()));
        let (b, repo, _) = plan_recovery(ctx, service, &Target::Latest)?;
        report.snapshot = b.snapshot.clone();
        report.repository = repo.clone();
        prepare_dest(&data, true)?;
        // From here on the sandbox is removed whatever happens.
        let guard = Running {
            data: data.clone(),
            users: Vec::new(),
            socket_dir: PathBuf::from(format!("/tmp/lifeboat-{}-sandbox", std::process::id())),
            port: 0,
            pg_ctl: pg.tool("pg_ctl"),
            remove_on_drop: true,
            keep_running: true,
        };
        register(&guard);
        let store = ctx.open_repo(&repo)?;
        store.restore(&b.snapshot, Some("/pgdata"), &data)?;
        let port = free_port().map_err(|e| {
            Error::new(
                Kind::Io,
                format!("finding a free port for the sandbox: {e}"),
            )
        })?;
        configure_recovery(ctx, service, &data, &Target::Latest, Some(port))?;
        let ids = owner_ids(&data, None)?;
        if let Some((uid, gid)) = ids {
            chown_tree(&data, uid, gid)
                .map_err(|e| Error::new(Kind::Io, format!("chown sandbox: {e}")))?;
            // The owner must be able to reach the sandbox directory.
            let _ = std::os::unix::fs::chown(&sandbox_root, Some(uid), Some(gid));
        }
        preflight_restore_command(ctx, service, &data)?;
        let run = start_server(&pg, &data, port, ids, true)?;
        // `run` owns the sandbox now (stop and remove on drop).
        std::mem::forget(guard);
        let reached = wait_promoted(&run, Duration::from_secs(3600))?;
        report.restore_ms = started.elapsed().as_millis() as u64;
        report.data_age_ms = reached
            .last_xact_time
            .map(|t| ((jiff::Timestamp::now().as_microsecond() - t).max(0) / 1000) as u64);
        report.reached = Some(reached);
        for sql in pg.checks {
            let dbname = pg
                .members
                .values()
                .find_map(|m| m.dbname.clone())
                .unwrap_or_else(|| "postgres".into());
            let res = connect_local(&run, &dbname, Duration::from_secs(5))
                .and_then(|mut c| lifeboat_pg::local_check(&mut c, sql));
            report.checks.push(match res {
                Ok(true) => CheckResult {
                    sql: sql.clone(),
                    ok: true,
                    detail: "true".into(),
                },
                Ok(false) => CheckResult {
                    sql: sql.clone(),
                    ok: false,
                    detail: "returned false".into(),
                },
                Err(e) => CheckResult {
                    sql: sql.clone(),
                    ok: false,
                    detail: e,
                },
            });
        }
        drop(run);
        Ok(())
    })();
    yield_to_teardown();
    match r {
        Ok(()) => report.ok = report.checks.iter().all(|c| c.ok),
        Err(e) => report.error = Some(e.to_string()),
    }
    let figures = serde_json::to_value(&report).unwrap_or_default();
    ctx.record(
        "verify restore",
        service,
        if report.ok { "ok" } else { "failed" },
        started,
        figures,
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_times() {
        let utc = parse_pg_time("2026-11-20 14:03:00+00").unwrap();
        assert_eq!(parse_pg_time("2026-11-20T14:03:00Z"), Some(utc));
        assert_eq!(parse_pg_time("2026-11-20 16:03:00+02"), Some(utc));
        assert_eq!(parse_pg_time("2026-11-20 19:33:00+0530"), Some(utc));
        assert_eq!(parse_pg_time("2026-11-20 19:33:00+05:30"), Some(utc));
        assert_eq!(parse_pg_time("2026-11-20 09:03:00-05"), Some(utc));
        assert_eq!(
            parse_pg_time("2026-11-20 14:03:00.25+00"),
            Some(utc + 250_000)
        );
        assert_eq!(parse_pg_time("2026-11-20 14:03:00"), None);
        assert_eq!(parse_pg_time("yesterday"), None);
    }

    #[test]
    fn log_lines() {
        let log = "2026-11-22 06:00:01.000 UTC [1] LOG:  recovery stopping before commit of transaction 740, time 2026-11-22 06:00:00.5+00\n\
                   2026-11-22 06:00:01.000 UTC [1] LOG:  redo done at 0/3000148 system usage: CPU: user: 0.00 s\n\
                   2026-11-22 06:00:01.000 UTC [1] LOG:  last completed transaction was at log time 2026-11-22 06:00:00.25+00\n";
        let r = reached_from_log(log);
        assert_eq!(r.lsn.as_deref(), Some("0/3000148"));
        assert!(r
            .stop_line
            .unwrap()
            .starts_with("recovery stopping before commit"));
        assert_eq!(r.last_xact_time, parse_pg_time("2026-11-22 06:00:00.25+00"));
        assert!(r.last_xact_time.is_some());
    }
}
