//! The WAL handoff: `lifeboat wal push` (PostgreSQL's `archive_command`) hands its file to a
//! running daemon over a Unix socket in the state directory, instead of opening the archive
//! and doing the work in a fresh process for every 16 MiB segment.
//!
//! One connection per file; newline-delimited JSON. The client sends
//! `{"v":1,"service":…,"path":…}` (an absolute path: the daemon reads the file itself). The
//! daemon answers `{"accepted":true}` at once, then, when the file is durable in the archive,
//! the push report — or an error (the same one the process path would give: a conflict, a wrong
//! key, a full disk), or `fallback` when it cannot take this file (it cannot read it, or its
//! plan has no such service). The client archives the file itself whenever the daemon is not
//! there, does not accept within a short time, goes away before answering, or says `fallback`:
//! the daemon is a fast path, never a place where a segment can be lost. A push both of them
//! made is harmless: the same content under the same name is stored once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_context::Context;
use lifeboat_core::{Error, Kind};
use lifeboat_store::walarchive::WalArchive;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::wal::PushReport;

/// The socket's name in the state directory.
pub const SOCKET: &str = "wal.sock";
/// How long a client waits for the daemon to take its request before archiving by itself.
const ACCEPT_WAIT: Duration = Duration::from_secs(2);
/// How long a client waits for a taken request to finish before archiving by itself.
const PUSH_WAIT: Duration = Duration::from_secs(300);

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// `LIFEBOAT_WAL_HANDOFF=off` makes `wal push` archive in its own process.
pub fn enabled() -> bool {
    std::env::var("LIFEBOAT_WAL_HANDOFF").map_or(true, |v| v != "off")
}

#[derive(Serialize, Deserialize)]
struct Request {
    v: u32,
    /// The client's plan (its `name`): a daemon serving another plan in the same state
    /// directory leaves the file to the client.
    plan: String,
    service: String,
    path: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct WireError {
    kind: Kind,
    message: String,
    #[serde(default)]
    hint: Option<String>,
}

#[derive(Serialize, Deserialize, Default)]
struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    accepted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    report: Option<PushReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<WireError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fallback: Option<String>,
}

/// What became of a handoff.
pub enum Handoff {
    /// The daemon archived the file (durable) or refused it for a reason the process path
    /// would refuse it too.
    Done(Result<PushReport, Error>),
    /// The daemon did not take it: archive in this process. `Some` says why when something
    /// looks wrong (a daemon that went away, or did not answer); `None` when no daemon runs.
    Unavailable(Option<String>),
}

/// Hand `path` (absolute) over to the daemon serving `state_dir`, if one does.
pub fn hand_over(ctx: &Context, service: &str, path: &Path) -> Handoff {
    let sock = socket_path(&ctx.state_dir);
    let stream = match UnixStream::connect(&sock) {
        Ok(s) => s,
        // No daemon (no socket, or a socket left by one that died), or not ours to use.
        Err(_) => return Handoff::Unavailable(None),
    };
    match exchange(stream, &ctx.plan.name, service, path) {
        Ok(h) => h,
        Err(e) => Handoff::Unavailable(Some(e)),
    }
}

fn exchange(
    mut stream: UnixStream,
    plan: &str,
    service: &str,
    path: &Path,
) -> Result<Handoff, String> {
    let mut req = serde_json::to_vec(&Request {
        v: 1,
        plan: plan.into(),
        service: service.into(),
        path: path.into(),
    })
    .map_err(|e| e.to_string())?;
    req.push(b'\n');
    let _ = stream.set_write_timeout(Some(ACCEPT_WAIT));
    stream
        .write_all(&req)
        .map_err(|e| format!("the daemon did not take the request: {e}"))?;
    let mut r = BufReader::new(stream);
    let first = read_reply(&mut r, ACCEPT_WAIT, "take the request")?;
    if first.accepted != Some(true) {
        return Ok(interpret(first));
    }
    let done = read_reply(&mut r, PUSH_WAIT, "finish archiving")?;
    Ok(interpret(done))
}

fn read_reply(r: &mut BufReader<UnixStream>, wait: Duration, what: &str) -> Result<Reply, String> {
    let _ = r.get_ref().set_read_timeout(Some(wait));
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Err(format!("the daemon went away before it could {what}")),
        Ok(_) => serde_json::from_str(&line)
            .map_err(|e| format!("the daemon answered something unreadable ({e})")),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!(
                "the daemon did not {what} within {} s",
                wait.as_secs()
            ))
        }
        Err(e) => Err(format!("the daemon's socket failed: {e}")),
    }
}

fn interpret(r: Reply) -> Handoff {
    if let Some(why) = r.fallback {
        return Handoff::Unavailable(Some(why));
    }
    if let Some(e) = r.error {
        let mut err = Error::new(e.kind, e.message);
        if let Some(h) = e.hint {
            err = err.hint(h);
        }
        return Handoff::Done(Err(err));
    }
    match r.report {
        Some(mut report) => {
            report.via = "daemon".into();
            Handoff::Done(Ok(report))
        }
        None => Handoff::Unavailable(Some("the daemon answered without a result".into())),
    }
}

/// Bind the handoff socket in the state directory (replacing one a dead daemon left: the
/// daemon's control lock, held by the caller, says no other daemon serves this directory).
/// Only the state directory's owner may connect.
pub fn bind(ctx: &Context) -> Result<std::os::unix::net::UnixListener, Error> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let path = socket_path(&ctx.state_dir);
    let io = |what: &str, e: std::io::Error| {
        Error::new(
            Kind::Io,
            format!("WAL handoff socket {}: cannot {what}: {e}", path.display()),
        )
        .hint("check the state directory's owner, permissions and free space; meanwhile `wal push` archives each segment in its own process")
    };
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("replace it", e)),
        _ => {}
    }
    let l = std::os::unix::net::UnixListener::bind(&path).map_err(|e| io("listen", e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("restrict it to its owner", e))?;
    // A daemon run by root serves the state directory's owner (the user PostgreSQL runs
    // archive_command as, when the state directory is theirs).
    if unsafe { libc::geteuid() } == 0 {
        if let Ok(md) = std::fs::metadata(&ctx.state_dir) {
            std::os::unix::fs::chown(&path, Some(md.uid()), Some(md.gid()))
                .map_err(|e| io("give it to the state directory's owner", e))?;
        }
    }
    l.set_nonblocking(true).map_err(|e| io("listen", e))?;
    Ok(l)
}

/// The services whose WAL the plan archives: the daemon serves handoffs when there is one.
pub fn archiving_services(ctx: &Context) -> Vec<String> {
    ctx.plan
        .services
        .keys()
        .filter(|s| crate::wal::wal_repo(ctx, s).is_ok())
        .cloned()
        .collect()
}

type Archives = Arc<Mutex<HashMap<String, Arc<WalArchive>>>>;

/// Where the daemon's log lines go: `(event, service, fields)`.
pub type Log = fn(&str, &str, serde_json::Value);

/// Serve handoffs until `stop` turns true; the socket is removed on the way out. Every
/// handoff is logged (`wal handoff`: the file, and what became of it).
pub async fn serve(
    ctx: Context,
    listener: std::os::unix::net::UnixListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
    log: Log,
) {
    let path = socket_path(&ctx.state_dir);
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("WAL handoff socket: {e}");
            return;
        }
    };
    let archives: Archives = Default::default();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    tokio::spawn(connection(ctx.clone(), archives.clone(), stream, log));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
        }
    }
    let _ = std::fs::remove_file(path);
}

async fn connection(ctx: Context, archives: Archives, stream: tokio::net::UnixStream, log: Log) {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    // A request is one short line; read no more than that.
    let mut rd = tokio::io::BufReader::new(rd.take(64 * 1024));
    match tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    let mut about = (String::from("*"), String::new());
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) if req.v == 1 => {
            about = (req.service.clone(), crate::wal::file_name(&req.path));
            if send(
                &mut wr,
                &Reply {
                    accepted: Some(true),
                    ..Default::default()
                },
            )
            .await
            .is_err()
            {
                return;
            }
            tokio::task::spawn_blocking(move || take(&ctx, &archives, &req))
                .await
                .unwrap_or_else(|_| Reply {
                    fallback: Some("the daemon's archiving task failed".into()),
                    ..Default::default()
                })
        }
        Ok(req) => Reply {
            fallback: Some(format!("the daemon speaks version 1, not {}", req.v)),
            ..Default::default()
        },
        Err(e) => Reply {
            fallback: Some(format!("the daemon could not read the request: {e}")),
            ..Default::default()
        },
    };
    let delivered = send(&mut wr, &reply).await.is_ok();
    let (service, file) = about;
    let fields = match (&reply.report, &reply.error, &reply.fallback) {
        (Some(r), _, _) => {
            serde_json::json!({"file": file, "outcome": r.outcome, "bytes": r.bytes, "ms": r.ms, "answered": delivered})
        }
        (_, Some(e), _) => {
            serde_json::json!({"file": file, "outcome": "refused", "error": e.message, "answered": delivered})
        }
        (_, _, Some(why)) => {
            serde_json::json!({"file": file, "outcome": "left to the process", "reason": why})
        }
        _ => serde_json::json!({"file": file}),
    };
    log("wal handoff", &service, fields);
}

async fn send(wr: &mut tokio::net::unix::OwnedWriteHalf, r: &Reply) -> std::io::Result<()> {
    let mut b = serde_json::to_vec(r).expect("serialisable");
    b.push(b'\n');
    wr.write_all(&b).await?;
    wr.flush().await
}

/// The daemon's side of one handoff (blocking: file reads, compression, the store's fsyncs).
fn take(ctx: &Context, archives: &Archives, req: &Request) -> Reply {
    let started = Instant::now();
    let fallback = |why: String| Reply {
        fallback: Some(why),
        ..Default::default()
    };
    let service = req.service.as_str();
    if req.plan != ctx.plan.name {
        return fallback(format!(
            "the daemon serves plan {}, not {}",
            ctx.plan.name, req.plan
        ));
    }
    if let Err(e) = crate::wal::wal_repo(ctx, service) {
        // The daemon's plan may be older than the client's.
        return fallback(format!(
            "the daemon's plan does not archive it: {}",
            e.message
        ));
    }
    if !req.path.is_absolute() {
        return fallback(format!("{} is not an absolute path", req.path.display()));
    }
    let data = match std::fs::read(&req.path) {
        Ok(d) => d,
        Err(e) => {
            return fallback(format!(
                "the daemon cannot read {}: {e}",
                req.path.display()
            ))
        }
    };
    let cached = archives.lock().ok().and_then(|m| m.get(service).cloned());
    let archive = match cached {
        Some(a) => a,
        None => match crate::wal::archive(ctx, service) {
            Ok((a, _)) => {
                let a = Arc::new(a);
                if let Ok(mut m) = archives.lock() {
                    m.insert(service.to_string(), a.clone());
                }
                a
            }
            Err(e) => return error_reply(e),
        },
    };
    let name = crate::wal::file_name(&req.path);
    match crate::wal::push_data(ctx, &archive, &name, &data, started) {
        Ok(report) => Reply {
            report: Some(report),
            ..Default::default()
        },
        Err(e) => {
            if e.kind == Kind::Key {
                // The repository's key may have changed under the daemon: open it afresh next time.
                if let Ok(mut m) = archives.lock() {
                    m.remove(service);
                }
            }
            error_reply(e)
        }
    }
}

fn error_reply(e: Error) -> Reply {
    Reply {
        error: Some(WireError {
            kind: e.kind,
            message: e.message,
            hint: e.hint,
        }),
        ..Default::default()
    }
}
