//! Failover state that must survive a daemon restart: which member traffic goes to,
//! the fencing epoch, and a failover under way. One JSON file per service in
//! `<state>/failover/`, replaced atomically (write, fsync, rename, fsync the directory).
//!
//! The epoch only moves forward: a write with a lower epoch than the stored one is refused, so
//! a stale daemon (or a restarted one that read old state) can never route traffic back to a
//! fenced member. The state changes only through [`StateFile`]'s named transitions (adopt,
//! begin a failover or switchover, call off, complete, route to): each reads the state on disk,
//! applies itself and writes it back, so no caller writes a stale copy.
//!
//! Beside it, [`SyncFile`] keeps the daemon's record of the primary's synchronous standbys.

use std::path::{Path, PathBuf};

use lifeboat_core::{Error, Kind};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverState {
    /// The member traffic goes to.
    pub primary: Option<String>,
    pub epoch: u64,
    /// Recorded before the first action of a failover, cleared after its last: (target, epoch).
    pub in_progress: Option<(String, u64)>,
}

pub struct StateFile {
    path: PathBuf,
}

/// What the daemon last saw of a healthy primary's replication: which standbys it listed as
/// synchronous and streaming, and where everyone was. In memory only, it was lost with the
/// daemon: a daemon restarted while the primary was down could not tell a synchronous standby
/// from any other, and a sync tier held until a person accepted data loss (Patroni keeps this
/// in its DCS as `/sync` for the same reason). Written by the monitor alone, fsynced, at most
/// once a second and whenever the sets change; `seen_at_ms` says how old it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The primary it describes, and the epoch it was primary in: a record of another
    /// primary or epoch says nothing about this one.
    pub primary: String,
    pub epoch: u64,
    pub system_id: Option<String>,
    pub timeline: Option<u32>,
    /// The primary's write position.
    pub primary_lsn: Option<u64>,
    /// Sites the primary listed as synchronous.
    pub synchronous: Vec<String>,
    /// Sites the primary listed as streaming.
    pub streaming: Vec<String>,
    /// Sites' flushed positions as the primary reported them.
    pub flushed: std::collections::BTreeMap<String, u64>,
    /// When this was seen (Unix milliseconds).
    pub seen_at_ms: i64,
}

pub struct SyncFile {
    path: PathBuf,
}

impl SyncFile {
    pub fn new(state_dir: &Path, service: &str) -> Self {
        Self {
            path: state_dir
                .join("failover")
                .join(format!("{service}.sync.json")),
        }
    }

    /// The record, if there is a readable one. An unreadable record is no knowledge (the
    /// daemon then holds a sync tier, as without one), not an error that stops monitoring.
    pub fn load(&self) -> Option<SyncRecord> {
        serde_json::from_slice(&std::fs::read(&self.path).ok()?).ok()
    }

    pub fn store(&self, r: &SyncRecord) -> Result<(), Error> {
        write_atomically(
            &self.path,
            &serde_json::to_vec_pretty(r).expect("serialisable"),
        )
    }
}

/// Replace `path` with `body` (see [`lifeboat_context::write_atomically`]).
fn write_atomically(path: &Path, body: &[u8]) -> Result<(), Error> {
    lifeboat_context::write_atomically(path, body).map_err(|e| io(path, e))
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::new(Kind::Io, format!("failover state {}: {e}", path.display()))
}

impl StateFile {
    pub fn new(state_dir: &Path, service: &str) -> Self {
        Self {
            path: state_dir.join("failover").join(format!("{service}.json")),
        }
    }

    pub fn load(&self) -> Result<FailoverState, Error> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                Error::new(
                    Kind::Integrity,
                    format!("failover state {} is unreadable: {e}", self.path.display()),
                )
                .hint("do not edit it by hand; restore it from the evidence log's last failover event")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FailoverState::default()),
            Err(e) => Err(io(&self.path, e)),
        }
    }

    /// Apply one transition to the state on disk and return the new state. Every change of
    /// the failover state is one of the named transitions below, so the order of writes is
    /// decided here, not by whoever holds a copy.
    fn apply(&self, change: impl FnOnce(&mut FailoverState)) -> Result<FailoverState, Error> {
        let mut s = self.load()?;
        change(&mut s);
        self.store(&s)?;
        Ok(s)
    }

    /// First start: the one member that reports itself primary becomes the routed primary.
    pub fn adopt(&self, site: &str) -> Result<FailoverState, Error> {
        self.apply(|s| {
            s.primary = Some(site.to_string());
            s.epoch = s.epoch.max(1);
        })
    }

    /// A failover's intent, before its first action: the epoch moves forward now, so a
    /// restarted daemon resumes this exact failover and nothing routes with an older epoch.
    pub fn begin_failover(&self, to: &str, epoch: u64) -> Result<FailoverState, Error> {
        self.apply(|s| {
            s.in_progress = Some((to.to_string(), epoch));
            s.epoch = s.epoch.max(epoch);
        })
    }

    /// A switchover's intent: a daemon that dies from here on resumes a failover to the target
    /// (safe: the old primary is stopped before the target is promoted); the epoch moves when
    /// the switchover completes, as it may still be called off.
    pub fn begin_switchover(&self, to: &str, epoch: u64) -> Result<FailoverState, Error> {
        self.apply(|s| s.in_progress = Some((to.to_string(), epoch)))
    }

    /// A switchover called off before the target was promoted: the old primary stays.
    pub fn call_off(&self) -> Result<FailoverState, Error> {
        self.apply(|s| s.in_progress = None)
    }

    /// A failover or switchover done: `to` is the routed primary from `epoch` on.
    pub fn complete(&self, to: &str, epoch: u64) -> Result<FailoverState, Error> {
        self.apply(|s| {
            s.primary = Some(to.to_string());
            s.epoch = s.epoch.max(epoch);
            s.in_progress = None;
        })
    }

    /// A runbook's `switch-traffic` step: route to `site` under a new epoch.
    pub fn route_to(&self, site: &str) -> Result<FailoverState, Error> {
        self.apply(|s| {
            s.primary = Some(site.to_string());
            s.epoch += 1;
            s.in_progress = None;
        })
    }

    /// Replace the state. Refused if it would move the epoch backwards.
    fn store(&self, s: &FailoverState) -> Result<(), Error> {
        let current = self.load()?;
        if s.epoch < current.epoch {
            return Err(Error::new(
                Kind::Conflict,
                format!(
                    "refusing to move the fencing epoch back from {} to {}",
                    current.epoch, s.epoch
                ),
            ));
        }
        write_atomically(
            &self.path,
            &serde_json::to_vec_pretty(s).expect("serialisable"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reload_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path(), "db");
        assert_eq!(f.load().unwrap(), FailoverState::default());
        let s = FailoverState {
            primary: Some("east".into()),
            epoch: 3,
            in_progress: Some(("west".into(), 4)),
        };
        f.store(&s).unwrap();
        assert_eq!(StateFile::new(dir.path(), "db").load().unwrap(), s);
        let older = FailoverState {
            epoch: 2,
            ..s.clone()
        };
        let e = f.store(&older).unwrap_err();
        assert!(e.message.contains("back from 3 to 2"), "{}", e.message);
        assert_eq!(f.load().unwrap().epoch, 3);
        std::fs::write(dir.path().join("failover/db.json"), "{").unwrap();
        assert_eq!(f.load().unwrap_err().kind, Kind::Integrity);
    }
}
