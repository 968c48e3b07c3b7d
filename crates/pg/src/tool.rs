//! Running the PostgreSQL programs Lifeboat drives (`pg_basebackup`, `pg_dump`, `pg_ctl`):
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
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if checked.elapsed() >= Duration::from_secs(1).min(stall) {
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
