//! The evidence log: an append-only, hash-chained record of every state-changing act. Depends
//! on `lifeboat-core` only; `lifeboat-context` records into it.
//!
//! Each event carries the hash of the one before it; its own hash covers every field and that
//! link. Editing an event breaks its hash, deleting one breaks the next event's link (and the
//! sequence), and removing events at the end is caught by the head file written beside the
//! database after every append. Embedded default: SQLite in the state directory.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    // Displayed with their cause inline (not as `source`), so a chain printer shows it once.
    #[error("evidence log {path}: {cause}")]
    Db {
        path: String,
        cause: rusqlite::Error,
    },
    #[error("evidence log head {path}: {cause}")]
    Head { path: String, cause: std::io::Error },
}

/// What a command reports about what it did.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Draft {
    pub command: String,
    pub plan: String,
    pub target: String,
    /// `ok`, `failed`, `refused`, …
    pub outcome: String,
    pub duration_ms: u64,
    pub figures: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub seq: i64,
    pub time: String,
    pub actor: String,
    pub command: String,
    pub plan: String,
    pub target: String,
    pub outcome: String,
    pub duration_ms: i64,
    pub figures: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn event_hash(e: &Event) -> String {
    // A fixed field order, length-prefixed, so no two events serialise alike.
    let mut h = Sha256::new();
    for part in [
        e.seq.to_string(),
        e.time.clone(),
        e.actor.clone(),
        e.command.clone(),
        e.plan.clone(),
        e.target.clone(),
        e.outcome.clone(),
        e.duration_ms.to_string(),
        e.figures.to_string(),
        e.prev_hash.clone(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

pub struct Evidence {
    conn: Connection,
    path: PathBuf,
    head: PathBuf,
}

/// Who is acting: `$LIFEBOAT_ACTOR`, else `user@host`.
pub fn default_actor() -> String {
    if let Ok(a) = std::env::var("LIFEBOAT_ACTOR") {
        return a;
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", gethostname::gethostname().to_string_lossy())
}

/// The result of checking the chain.
#[derive(Clone, Debug, Serialize)]
pub struct ChainReport {
    pub events: usize,
    pub problems: Vec<String>,
}

impl Evidence {
    pub fn open(state_dir: &Path) -> Result<Self, EvidenceError> {
        let path = state_dir.join("evidence.db");
        let db = |cause| db_err(&path, cause);
        std::fs::create_dir_all(state_dir).map_err(|cause| EvidenceError::Head {
            path: state_dir.display().to_string(),
            cause,
        })?;
        let conn = Connection::open(&path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        // Processes that open a new log at the same moment (the daemon, archive_command, a
        // command) race to switch it to WAL mode, and SQLite answers the loser "database is
        // locked" at once, without waiting its busy timeout: try again for a while.
        let started = std::time::Instant::now();
        loop {
            match conn.execute_batch("PRAGMA journal_mode=WAL;") {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) && started.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(db(e)),
                Ok(()) => break,
            }
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS events (
                seq INTEGER PRIMARY KEY,
                time TEXT NOT NULL,
                actor TEXT NOT NULL,
                command TEXT NOT NULL,
                plan TEXT NOT NULL,
                target TEXT NOT NULL,
                outcome TEXT NOT NULL,
                duration_ms INTEGER NOT NULL,
                figures TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL
             );",
        )
        .map_err(db)?;
        Ok(Self {
            conn,
            head: state_dir.join("evidence.head"),
            path,
        })
    }

    fn db(&self, cause: rusqlite::Error) -> EvidenceError {
        db_err(&self.path, cause)
    }

    pub fn append(&mut self, actor: &str, d: &Draft) -> Result<Event, EvidenceError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| db_err(&self.path, e))?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        let (seq, prev_hash) = match last {
            Some((s, h)) => (s + 1, h),
            None => (1, GENESIS.to_string()),
        };
        let mut e = Event {
            seq,
            time: jiff::Timestamp::now().to_string(),
            actor: actor.into(),
            command: d.command.clone(),
            plan: d.plan.clone(),
            target: d.target.clone(),
            outcome: d.outcome.clone(),
            duration_ms: d.duration_ms as i64,
            figures: d.figures.clone(),
            prev_hash,
            hash: String::new(),
        };
        e.hash = event_hash(&e);
        tx.execute(
            "INSERT INTO events (seq,time,actor,command,plan,target,outcome,duration_ms,figures,prev_hash,hash)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
            params![
                e.seq,
                e.time,
                e.actor,
                e.command,
                e.plan,
                e.target,
                e.outcome,
                e.duration_ms,
                e.figures.to_string(),
                e.prev_hash,
                e.hash
            ],
        )
        .map_err(|err| db_err(&self.path, err))?;
        // The head is written while the write transaction still serialises appenders, so two
        // processes cannot leave it pointing at an older event. Written by rename: never torn.
        let head_err = |cause| EvidenceError::Head {
            path: self.head.display().to_string(),
            cause,
        };
        let tmp = self.head.with_extension("head.tmp");
        std::fs::write(&tmp, format!("{} {}\n", e.seq, e.hash)).map_err(head_err)?;
        std::fs::rename(&tmp, &self.head).map_err(head_err)?;
        tx.commit().map_err(|err| db_err(&self.path, err))?;
        Ok(e)
    }

    /// Events in order; `last` limits to the newest N.
    pub fn list(&self, last: Option<usize>) -> Result<Vec<Event>, EvidenceError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq,time,actor,command,plan,target,outcome,duration_ms,figures,prev_hash,hash FROM events ORDER BY seq")
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| {
                let figures: String = r.get(8)?;
                Ok(Event {
                    seq: r.get(0)?,
                    time: r.get(1)?,
                    actor: r.get(2)?,
                    command: r.get(3)?,
                    plan: r.get(4)?,
                    target: r.get(5)?,
                    outcome: r.get(6)?,
                    duration_ms: r.get(7)?,
                    figures: serde_json::from_str(&figures)
                        .unwrap_or(serde_json::Value::String(figures)),
                    prev_hash: r.get(9)?,
                    hash: r.get(10)?,
                })
            })
            .map_err(|e| self.db(e))?;
        let mut all = Vec::new();
        for r in rows {
            all.push(r.map_err(|e| self.db(e))?);
        }
        if let Some(n) = last {
            let skip = all.len().saturating_sub(n);
            all.drain(..skip);
        }
        Ok(all)
    }

    /// Walk the chain: every hash recomputed, every link and sequence number checked, and the
    /// last event compared with the head file.
    pub fn verify(&self) -> Result<ChainReport, EvidenceError> {
        let events = self.list(None)?;
        let mut problems = Vec::new();
        let mut prev = GENESIS.to_string();
        let mut expected_seq = 1;
        for e in &events {
            if e.seq != expected_seq {
                problems.push(format!(
                    "event {} follows event {}: event(s) {}..{} were deleted",
                    e.seq,
                    expected_seq - 1,
                    expected_seq,
                    e.seq - 1
                ));
            }
            if e.prev_hash != prev {
                problems.push(format!(
                    "event {} does not link to the event before it (chain broken)",
                    e.seq
                ));
            }
            if event_hash(e) != e.hash {
                problems.push(format!(
                    "event {} ({} {} at {}) was modified after it was recorded",
                    e.seq, e.command, e.target, e.time
                ));
            }
            prev = e.hash.clone();
            expected_seq = e.seq + 1;
        }
        if let Ok(head) = std::fs::read_to_string(&self.head) {
            let mut parts = head.split_whitespace();
            let seq: i64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let hash = parts.next().unwrap_or("");
            match events.last() {
                Some(last) if last.seq < seq => problems.push(format!(
                    "the log ends at event {} but event {seq} was recorded: events at the end were deleted",
                    last.seq
                )),
                Some(last) if last.seq == seq && last.hash != hash => problems.push(format!(
                    "the last event {seq} differs from the one recorded in the head file"
                )),
                None if seq > 0 => problems.push(format!(
                    "the log is empty but {seq} event(s) were recorded"
                )),
                _ => {}
            }
        } else if !events.is_empty() {
            problems.push("the head file is missing".into());
        }
        Ok(ChainReport {
            events: events.len(),
            problems,
        })
    }
}

fn db_err(path: &Path, cause: rusqlite::Error) -> EvidenceError {
    EvidenceError::Db {
        path: path.display().to_string(),
        cause,
    }
}

/// Commands report evidence failures like storage failures: what failed, and what to check.
impl From<EvidenceError> for lifeboat_core::Error {
    fn from(e: EvidenceError) -> Self {
        lifeboat_core::Error::new(
            lifeboat_core::Kind::Io,
            format!("recording in the evidence log failed: {e}"),
        )
        .hint("check the state directory (free space, permissions), or set state_dir / LIFEBOAT_STATE_DIR")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(target: &str) -> Draft {
        Draft {
            command: "backup".into(),
            plan: "t".into(),
            target: target.into(),
            outcome: "ok".into(),
            duration_ms: 5,
            figures: serde_json::json!({"files": 3}),
        }
    }

    #[test]
    fn concurrent_appenders_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let path = dir.path().to_path_buf();
                s.spawn(move || {
                    let mut ev = Evidence::open(&path).unwrap();
                    for i in 0..10 {
                        ev.append("tester", &draft(&format!("{t}-{i}"))).unwrap();
                    }
                });
            }
        });
        let ev = Evidence::open(dir.path()).unwrap();
        let r = ev.verify().unwrap();
        assert_eq!(r.events, 40);
        assert!(r.problems.is_empty(), "{r:?}");
        let last = ev.list(Some(1)).unwrap().pop().unwrap();
        let head = std::fs::read_to_string(dir.path().join("evidence.head")).unwrap();
        assert_eq!(head.trim(), format!("{} {}", last.seq, last.hash));
    }

    #[test]
    fn chain_detects_edit_delete_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let mut ev = Evidence::open(dir.path()).unwrap();
        for t in ["a", "b", "c", "d"] {
            ev.append("tester", &draft(t)).unwrap();
        }
        assert!(ev.verify().unwrap().problems.is_empty());

        ev.conn
            .execute("UPDATE events SET outcome='failed' WHERE seq=2", [])
            .unwrap();
        let r = ev.verify().unwrap();
        assert!(
            r.problems.iter().any(|p| p.contains("event 2 (backup b")),
            "{r:?}"
        );
        ev.conn
            .execute("UPDATE events SET outcome='ok' WHERE seq=2", [])
            .unwrap();
        assert!(ev.verify().unwrap().problems.is_empty());

        ev.conn
            .execute("DELETE FROM events WHERE seq=3", [])
            .unwrap();
        let r = ev.verify().unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("event(s) 3..3 were deleted")),
            "{r:?}"
        );

        ev.conn
            .execute("DELETE FROM events WHERE seq=4", [])
            .unwrap();
        let r = ev.verify().unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("events at the end were deleted")),
            "{r:?}"
        );
    }
}
