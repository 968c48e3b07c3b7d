//! Failover state that must survive a daemon restart (issue 4): which member traffic goes to,
//! the fencing epoch, and a failover under way. One JSON file per service in
//! `<state>/failover/`, replaced atomically (write, fsync, rename, fsync the directory).
//!
//! The epoch only moves forward: a write with a lower epoch than the stored one is refused, so
//! a stale daemon (or a restarted one that read old state) can never route traffic back to a
//! fenced member.

use std::path::{Path, PathBuf};

use lifeboat_store::{Kind, StoreError};
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

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::new(Kind::Io, format!("failover state {}: {e}", path.display()))
}

impl StateFile {
    pub fn new(state_dir: &Path, service: &str) -> Self {
        Self {
            path: state_dir.join("failover").join(format!("{service}.json")),
        }
    }

    pub fn load(&self) -> Result<FailoverState, StoreError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                StoreError::new(
                    Kind::Integrity,
                    format!("failover state {} is unreadable: {e}", self.path.display()),
                )
                .hint("do not edit it by hand; restore it from the evidence log's last failover event")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FailoverState::default()),
            Err(e) => Err(io(&self.path, e)),
        }
    }

    /// Replace the state. Refused if it would move the epoch backwards.
    pub fn store(&self, s: &FailoverState) -> Result<(), StoreError> {
        use std::io::Write;
        let current = self.load()?;
        if s.epoch < current.epoch {
            return Err(StoreError::new(
                Kind::Conflict,
                format!(
                    "refusing to move the fencing epoch back from {} to {}",
                    current.epoch, s.epoch
                ),
            ));
        }
        let dir = self.path.parent().expect("has a parent");
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(s).expect("serialisable");
        (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        })()
        .map_err(|e| io(&self.path, e))
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
