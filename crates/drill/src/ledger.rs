//! Faults are written down before they are applied, so whatever a killed drill left behind
//! (frozen processes, a cut link) is undone by `lifeboat drill heal` or by the next drill's
//! start; and one drill runs at a time per state directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use lifeboat_core::{Error, Kind};

/// A fault that stays until it is healed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// Processes frozen with SIGSTOP (each with its start time, so a reused pid is never
    /// signalled): healed with SIGCONT.
    Stopped { what: String, pids: Vec<(u32, u64)> },
    /// A shell command that undoes what another one did (an nftables table added); run as
    /// root when `privileged`.
    Command {
        what: String,
        heal: String,
        #[serde(default)]
        privileged: bool,
    },
}

impl Fault {
    pub fn describe(&self) -> &str {
        match self {
            Fault::Stopped { what, .. } | Fault::Command { what, .. } => what,
        }
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::new(Kind::Io, format!("{}: {e}", path.display()))
}

/// Write a file so a crash leaves the old or the new content, never half of one.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A process's start time (clock ticks since boot), from /proc; None when it does not run.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    // Field 22 of stat; `rest` starts at field 3.
    fields.get(19)?.parse().ok()
}

pub struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    pub fn new(state_dir: &Path) -> Ledger {
        Ledger {
            dir: state_dir.join("drill"),
        }
    }

    fn faults_path(&self) -> PathBuf {
        self.dir.join("faults.json")
    }

    pub fn faults(&self) -> Vec<Fault> {
        std::fs::read(self.faults_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn store(&self, faults: &[Fault]) -> Result<(), Error> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        write_durably(
            &self.faults_path(),
            &serde_json::to_vec_pretty(faults).unwrap_or_default(),
        )
    }

    /// Write a fault down; only then may it be applied.
    pub fn add(&self, f: Fault) -> Result<(), Error> {
        let mut all = self.faults();
        all.push(f);
        self.store(&all)
    }

    /// Undo every fault written down; what was undone, in words.
    pub fn heal(&self) -> Result<Vec<String>, Error> {
        let mut done = Vec::new();
        let mut left = Vec::new();
        for f in self.faults() {
            match heal_one(&f) {
                Ok(what) => done.push(what),
                Err(e) => {
                    done.push(format!("{}: NOT healed: {e}", f.describe()));
                    left.push(f);
                }
            }
        }
        self.store(&left)?;
        Ok(done)
    }
}

fn heal_one(f: &Fault) -> Result<String, String> {
    match f {
        Fault::Stopped { what, pids } => {
            let mut n = 0;
            for (pid, start) in pids {
                if start_time(*pid) == Some(*start) {
                    // SAFETY: kill(2) with a pid checked against its start time just now.
                    unsafe { libc::kill(*pid as i32, libc::SIGCONT) };
                    n += 1;
                }
            }
            Ok(format!("{what}: {n} process(es) continued"))
        }
        Fault::Command {
            what,
            heal,
            privileged,
        } => {
            let mut c = std::process::Command::new("sh");
            c.arg("-c").arg(heal);
            if *privileged {
                crate::privileged(&mut c);
            }
            let out = c.output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(format!("{what}: undone"))
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        }
    }
}

/// The one drill running in a state directory.
#[derive(Debug, Serialize, Deserialize)]
pub struct Running {
    pub drill: String,
    pub pid: u32,
    pub start_time: u64,
    pub since: String,
}

pub struct RunLock {
    path: PathBuf,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl RunLock {
    /// Take the lock, or say which drill holds it. A lock left by a drill that no longer runs
    /// is taken over (the caller heals its faults).
    pub fn take(state_dir: &Path, drill: &str) -> Result<(RunLock, Option<Running>), Error> {
        let dir = state_dir.join("drill");
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let path = dir.join("running.json");
        let me = Running {
            drill: drill.into(),
            pid: std::process::id(),
            start_time: start_time(std::process::id()).unwrap_or(0),
            since: jiff::Timestamp::now().to_string(),
        };
        let mut abandoned = None;
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(&serde_json::to_vec(&me).unwrap_or_default())
                        .and_then(|_| f.sync_all())
                        .map_err(|e| io(&path, e))?;
                    return Ok((RunLock { path }, abandoned));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let other: Option<Running> = std::fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    match other {
                        Some(o) if start_time(o.pid) == Some(o.start_time) => {
                            return Err(Error::new(
                                Kind::Locked,
                                format!(
                                    "drill `{}` is running (pid {}, since {}): one drill at a time",
                                    o.drill, o.pid, o.since
                                ),
                            )
                            .hint("wait for it to finish, or stop it with Ctrl-C (its faults are healed)"));
                        }
                        o => {
                            abandoned = o;
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(io(&path, e)),
            }
        }
        Err(Error::new(
            Kind::Locked,
            format!("{}: another drill took the lock meanwhile", path.display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_drill_is_refused_and_a_dead_ones_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let (held, _) = RunLock::take(dir.path(), "kill-primary").unwrap();
        let e = RunLock::take(dir.path(), "switchover").err().unwrap();
        assert!(e.message.contains("drill `kill-primary` is running"), "{e}");
        drop(held);
        // A lock whose process is gone.
        let stale = Running {
            drill: "hang-primary".into(),
            pid: u32::MAX - 1,
            start_time: 1,
            since: "then".into(),
        };
        std::fs::write(
            dir.path().join("drill/running.json"),
            serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        let (_lock, abandoned) = RunLock::take(dir.path(), "switchover").unwrap();
        assert_eq!(abandoned.unwrap().drill, "hang-primary");
    }

    #[test]
    fn faults_are_healed_once_and_survive_a_restart_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(dir.path());
        let mark = dir.path().join("healed");
        l.add(Fault::Command {
            what: "link down".into(),
            heal: format!("echo x >> {}", mark.display()),
            privileged: false,
        })
        .unwrap();
        // A new ledger (the next process) sees it.
        assert_eq!(Ledger::new(dir.path()).faults().len(), 1);
        let done = Ledger::new(dir.path()).heal().unwrap();
        assert_eq!(done, vec!["link down: undone".to_string()]);
        assert!(l.faults().is_empty());
        assert!(l.heal().unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(&mark).unwrap(), "x\n");
    }
}
