//! Running the PostgreSQL programs Lifeboat drives (`pg_basebackup`, `pg_dump`, `pg_rewind`,
//! `pg_waldump`, `pg_receivewal`, single-user `postgres`, `pg_ctl` for restored servers):
//! stdin closed, stderr's last lines in the error with a hint for the known causes, and for the
//! long ones a watchdog that stops a program that makes no progress.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use lifeboat_core::{Error, Kind};

use crate::Member;

/// A plain-format, streamed base backup of `member` into `dest` (fast checkpoint, its own WAL,
/// a manifest without checksums), stopped when it writes nothing for `stall`.
pub fn basebackup(
    member: &Member,
    program: &Path,
    dest: &Path,
    label: &str,
    stall: Duration,
) -> Result<(), Error> {
    let mut cmd = Command::new(program);
    member.libpq_env(&mut cmd);
    cmd.arg("-D")
        .arg(dest)
        .args([
            "-F",
            "p",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-password",
        ])
        .args(["--manifest-checksums=NONE", "-l"])
        .arg(label);
    let watch = dest.parent().unwrap_or(dest);
    run_watched(
        cmd,
        &format!("pg_basebackup of {}", member.describe()),
        watch,
        stall,
    )
}

/// `pg_receivewal` for `member` (connection from the environment, never a password prompt),
/// with `args`; stdin and stdout closed, stderr piped for the caller's report.
pub fn receivewal(member: &Member, program: &Path, args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new(program);
    member.libpq_env(&mut cmd);
    cmd.args(args)
        .arg("--no-password")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// `pg_dump -Fc` of database `db` on `member` into `file`, stopped when it writes nothing for
/// `stall`.
pub fn dump(
    member: &Member,
    program: &Path,
    db: &str,
    file: &Path,
    stall: Duration,
) -> Result<(), Error> {
    let mut cmd = Command::new(program);
    member.libpq_env(&mut cmd);
    cmd.env("PGDATABASE", db)
        .args(["-F", "c", "--no-password", "-f"])
        .arg(file);
    let watch = file.parent().unwrap_or(file);
    run_watched(
        cmd,
        &format!("pg_dump of database {db} on {}", member.describe()),
        watch,
        stall,
    )
}

/// Bytes below `dir` (files only, recursively): how far a tool writing there has come.
fn bytes_below(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Run a PostgreSQL tool that writes below `progress`. One that writes nothing there for
/// `stall` is killed (with its process group) and the run fails: its server froze or the
/// network to it went silent, and the tool itself would wait forever.
fn run_watched(
    mut cmd: Command,
    what: &str,
    progress: &Path,
    stall: Duration,
) -> Result<(), Error> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    run_tool_inner(cmd, what, Some((progress, stall)))
}

/// Run a PostgreSQL tool to its end (one that returns at once, as `pg_ctl start`).
pub fn run_tool(cmd: Command, what: &str) -> Result<(), Error> {
    run_tool_inner(cmd, what, None)
}

fn run_tool_inner(
    mut cmd: Command,
    what: &str,
    watch: Option<(&Path, Duration)>,
) -> Result<(), Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        Error::new(
            Kind::Source,
            format!("cannot run {}: {e}", cmd.get_program().to_string_lossy()),
        )
        .hint("set bin_dir of the service in the plan to the directory holding the PostgreSQL programs")
    })?;
    // stderr on its own thread: a tool that fills the pipe must not block the watchdog.
    let reader = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut err = String::new();
            let _ = e.read_to_string(&mut err);
            err
        })
    });
    let mut seen = watch.map(|(p, _)| bytes_below(p)).unwrap_or(0);
    let mut moved = std::time::Instant::now();
    let mut checked = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(Error::new(Kind::Source, format!("{what}: {e}"))),
        }
        let Some((progress, stall)) = watch else {
            // Nothing to watch: wait for its end.
            break child
                .wait()
                .map_err(|e| Error::new(Kind::Source, format!("{what}: {e}")))?;
        };
        // Walking a big data directory costs: look a few times per stall window, at most
        // every 10 s.
        if checked.elapsed()
            >= (stall / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
        {
            checked = std::time::Instant::now();
            let now = bytes_below(progress);
            if now != seen {
                seen = now;
                moved = std::time::Instant::now();
            } else if moved.elapsed() >= stall {
                // SAFETY: signalling the process group this function started.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(Error::new(
                    Kind::Source,
                    format!(
                        "{what} wrote nothing for {} s and was stopped: the server is hung or the network to it went silent",
                        stall.as_secs()
                    ),
                )
                .hint("no snapshot was recorded; check the server, then run the backup again (the job's `stall_timeout` sets how long to wait)"));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let tail = lifeboat_core::error::stderr_tail(&err, 4);
    let hint = if tail.contains("password authentication failed") || tail.contains("no password") {
        "check the member's user and password in the plan"
    } else if tail.contains("replication connection") || tail.contains("pg_hba.conf") {
        "the role needs the REPLICATION attribute and a `replication` line in pg_hba.conf"
    } else {
        "no snapshot was recorded; fix the cause and run the backup again"
    };
    Err(Error::new(Kind::Source, format!("{what} failed ({status}): {tail}")).hint(hint))
}

/// `pg_waldump` of `data`'s WAL on timeline `tli` from `from` on (as the directory's owner).
pub fn waldump(
    bin_dir: &Path,
    data: &Path,
    tli: u32,
    from: lifeboat_core::wal::Lsn,
) -> Result<std::process::Output, Error> {
    crate::ops::run_as_owner(
        Command::new(bin_dir.join("pg_waldump"))
            .arg("-p")
            .arg(data.join("pg_wal"))
            .args(["-t", &tli.to_string(), "-s", &from.to_string()]),
        data,
    )
}

/// Crash recovery of a stopped data directory in single-user mode, keeping `keep_mb` of WAL
/// (a later `pg_rewind` needs the segments back to the fork).
pub async fn single_user_recovery(
    bin_dir: &Path,
    data: &Path,
    keep_mb: u64,
) -> Result<std::process::Output, Error> {
    let mut c = Command::new(bin_dir.join("postgres"));
    c.args(["--single", "-F", "-D"])
        .arg(data)
        .args(["-c", &format!("wal_keep_size={keep_mb}MB")])
        .args(["-c", "archive_mode=off"])
        .arg("template1");
    crate::ops::run_as_owner_async(c, data).await
}

/// `pg_rewind` of `data` from `source` (credentials through the environment, never the
/// command line where `ps` would show a password).
pub async fn rewind(
    bin_dir: &Path,
    data: &Path,
    source: &Member,
) -> Result<std::process::Output, Error> {
    let mut c = Command::new(bin_dir.join("pg_rewind"));
    c.arg("--target-pgdata")
        .arg(data)
        .arg(format!("--source-server=dbname={}", source.dbname));
    source.libpq_env(&mut c);
    crate::ops::run_as_owner_async(c, data).await
}

/// A fresh clone of `source` into `data` with `pg_basebackup`, connecting with `conninfo`'s
/// role and TLS settings (through the environment) as the standby will stream.
pub async fn clone_from(
    bin_dir: &Path,
    data: &Path,
    source: &Member,
    conninfo: &str,
) -> Result<std::process::Output, Error> {
    let mut c = Command::new(bin_dir.join("pg_basebackup"));
    c.arg("-D")
        .arg(data)
        .args(["-X", "stream", "--checkpoint=fast"]);
    source.libpq_env(&mut c);
    for (k, v) in crate::parse_conninfo(conninfo) {
        let var = match k.as_str() {
            "user" => "PGUSER",
            "password" => "PGPASSWORD",
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "sslcert" => "PGSSLCERT",
            "sslkey" => "PGSSLKEY",
            "channel_binding" => "PGCHANNELBINDING",
            "gssencmode" => "PGGSSENCMODE",
            "krbsrvname" => "PGKRBSRVNAME",
            _ => continue,
        };
        c.env(var, v);
    }
    crate::ops::run_as_owner_async(c, data).await
}

/// Start a restored server on a private socket directory, on `port`, with its own `hba_file`,
/// logging to `log` (`pg_ctl start`, which returns at once).
pub fn start_restored(
    pg_ctl: &Path,
    data: &Path,
    log: &Path,
    port: u16,
    socket_dir: &Path,
    hba: &Path,
) -> Result<(), Error> {
    let mut c = Command::new(pg_ctl);
    c.arg("-D")
        .arg(data)
        .arg("-l")
        .arg(log)
        .arg("-o")
        .arg(format!(
            "-c port={port} -c unix_socket_directories='{}' -c listen_addresses='localhost' -c hba_file='{}'",
            socket_dir.display(),
            hba.display()
        ))
        .args(["start", "-W"]);
    crate::as_owner_of(&mut c, data);
    run_tool(c, "pg_ctl start of the restored server")
}

/// Stop a restored server at once (`pg_ctl stop -m immediate`), best effort.
pub fn stop_restored(pg_ctl: &Path, data: &Path) {
    // The socket directory Lifeboat made for it (line 5 of postmaster.pid) goes with it.
    let socket = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().nth(4).map(|l| l.trim().to_string()))
        .filter(|d| d.starts_with("/tmp/lifeboat-"));
    let mut c = Command::new(pg_ctl);
    c.arg("-D")
        .arg(data)
        .args(["stop", "-m", "immediate", "-w", "-t", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::as_owner_of(&mut c, data);
    let _ = c.status();
    if let Some(d) = socket {
        let _ = std::fs::remove_dir_all(d);
    }
}
