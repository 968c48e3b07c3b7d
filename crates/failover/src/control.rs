//! How commands reach a running daemon: `lifeboat switchover` and `lifeboat
//! failover` hand their request to `lifeboat serve` when it runs — it owns the traffic endpoint
//! and must not decide against an operator's action — and run it themselves when it does not.
//!
//! Files in `<state>/daemon/`: `serve.lock` (flock held by the daemon for its lifetime: also
//! keeps a second daemon off the same state), `<service>.request.json` (one pending request,
//! written atomically), `<service>.result.<id>.json` (the answer).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeboat_core::{Error, Kind};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    /// `switchover` or `failover`.
    pub op: String,
    pub to: Option<String>,
    /// Failover: even though the primary is healthy.
    #[serde(default)]
    pub force: bool,
    /// Failover: the operator accepts losing acknowledged writes (`--accept-data-loss`).
    #[serde(default)]
    pub accept_loss: bool,
    /// Switchover: how long the target may take to catch up.
    pub timeout_ms: u64,
    pub actor: String,
}

impl Request {
    /// A request with a fresh id (milliseconds and pid: unique per host).
    pub fn new(op: &str, to: Option<String>, actor: &str) -> Request {
        Request {
            id: format!(
                "{}-{}",
                jiff::Timestamp::now().as_millisecond(),
                std::process::id()
            ),
            op: op.into(),
            to,
            force: false,
            accept_loss: false,
            timeout_ms: 0,
            actor: actor.into(),
        }
    }
}

pub struct Control {
    dir: PathBuf,
}

fn io(p: &Path, e: std::io::Error) -> Error {
    Error::new(Kind::Io, format!("{}: {e}", p.display()))
}

fn flock(f: &File, nonblocking: bool) -> bool {
    use std::os::unix::io::AsRawFd;
    let op = libc::LOCK_EX | if nonblocking { libc::LOCK_NB } else { 0 };
    // SAFETY: a valid open file descriptor.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

impl Control {
    pub fn new(state_dir: &Path) -> Control {
        Control {
            dir: state_dir.join("daemon"),
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("serve.lock")
    }

    /// For the daemon: hold the lock for as long as the returned file lives.
    pub fn hold(&self) -> Result<File, Error> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let p = self.lock_path();
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| io(&p, e))?;
        if !flock(&f, true) {
            return Err(Error::new(
                Kind::Locked,
                "another `lifeboat serve` runs with this state directory",
            )
            .hint("stop it first; two daemons would take decisions against each other"));
        }
        Ok(f)
    }

    /// Whether a daemon holds the lock now.
    pub fn daemon_running(&self) -> bool {
        let Ok(f) = File::open(self.lock_path()) else {
            return false;
        };
        !flock(&f, true)
    }

    fn request_path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.request.json"))
    }

    fn result_path(&self, service: &str, id: &str) -> PathBuf {
        self.dir.join(format!("{service}.result.{id}.json"))
    }

    /// Hand a request to the daemon (refused while another one waits).
    pub fn submit(&self, service: &str, r: &Request) -> Result<(), Error> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let p = self.request_path(service);
        if p.exists() {
            return Err(Error::new(
                Kind::Conflict,
                format!(
                    "another request for {service} is waiting for the daemon ({})",
                    p.display()
                ),
            ));
        }
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(r).expect("serialisable"))
            .and_then(|_| std::fs::rename(&tmp, &p))
            .map_err(|e| io(&p, e))
    }

    /// For the daemon: the pending request, removed from the queue.
    pub fn take(&self, service: &str) -> Option<Request> {
        let p = self.request_path(service);
        let body = std::fs::read(&p).ok()?;
        let _ = std::fs::remove_file(&p);
        serde_json::from_slice(&body).ok()
    }

    /// For the daemon: the answer to request `id`.
    pub fn answer(&self, service: &str, id: &str, result: &serde_json::Value) {
        let p = self.result_path(service, id);
        let tmp = p.with_extension("json.tmp");
        let _ = std::fs::write(&tmp, serde_json::to_vec_pretty(result).unwrap_or_default())
            .and_then(|_| std::fs::rename(&tmp, &p));
    }

    /// Wait for the daemon's answer (and remove it).
    /// Hand a switchover of `service` to `to` to the running daemon and wait for its report
    /// (`catch_up`: how long the target may take to replay the primary's last WAL).
    pub fn switchover(
        &self,
        service: &str,
        to: &str,
        catch_up: Duration,
        actor: &str,
    ) -> Result<crate::switchover::Report, Error> {
        let req = Request {
            timeout_ms: catch_up.as_millis() as u64,
            ..Request::new("switchover", Some(to.to_string()), actor)
        };
        self.submit(service, &req)?;
        let answer = self.wait(service, &req.id, catch_up * 2 + Duration::from_secs(120))?;
        if let Some(err) = answer["error"].as_str() {
            let mut e = Error::new(Kind::Source, err);
            if let Some(h) = answer["hint"].as_str() {
                e = e.hint(h);
            }
            return Err(e);
        }
        serde_json::from_value(answer["report"].clone())
            .map_err(|e| Error::new(Kind::Source, format!("the daemon's answer: {e}")))
    }

    pub fn wait(
        &self,
        service: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, Error> {
        let p = self.result_path(service, id);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(b) = std::fs::read(&p) {
                let _ = std::fs::remove_file(&p);
                return serde_json::from_slice(&b).map_err(|e| {
                    Error::new(Kind::Internal, format!("daemon's answer unreadable: {e}"))
                });
            }
            if Instant::now() > deadline {
                let _ = std::fs::remove_file(self.request_path(service));
                return Err(Error::new(
                    Kind::Source,
                    format!("the daemon did not answer within {timeout:?}"),
                )
                .hint("see its log; `lifeboat status` shows what it decided"));
            }
            if !self.daemon_running() {
                return Err(Error::new(
                    Kind::Source,
                    "the daemon stopped before answering",
                )
                .hint("see its log and the evidence log (`lifeboat audit list`) for how far it got; run the command again"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
