//! Repository locks in restic's own format, so Lifeboat, restic and rustic see each other.
//!
//! A lock is an encrypted JSON file in `locks/` named by the SHA-256 of its bytes (restic's
//! design). Backups take a shared lock, forget/prune an exclusive one: an exclusive lock
//! conflicts with every other lock. Lifeboat adds its job name to the JSON (restic ignores
//! unknown fields) so the same job never runs twice at once. Locks are refreshed every five
//! minutes while held; a lock is *stale* when its process is gone (same host) or it has not been
//! refreshed for 30 minutes, as restic decides. Stale locks do not block; they are reported with
//! the command that clears them (`lifeboat repo unlock`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes256ctr_poly1305aes::aead::Aead;
use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::error::{Error, Kind, Result};
use crate::objects::ObjectStore;

const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    pub time: String,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Lifeboat's own addition: which command and job hold the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifeboat: Option<LifeboatLock>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LifeboatLock {
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// The 64-byte restic master key (AES-256 key, then Poly1305 k and r).
#[derive(Clone)]
pub struct RepoKey([u8; 64]);

impl RepoKey {
    pub fn from_master(key: &rustic_core::repofile::MasterKey) -> Result<Self> {
        let mut k = [0u8; 64];
        if key.encrypt.len() != 32 || key.mac.k.len() != 16 || key.mac.r.len() != 16 {
            return Err(Error::new(Kind::Internal, "unexpected master key layout"));
        }
        k[..32].copy_from_slice(&key.encrypt);
        k[32..48].copy_from_slice(&key.mac.k);
        k[48..].copy_from_slice(&key.mac.r);
        Ok(Self(k))
    }

    fn cipher(&self) -> Aes256CtrPoly1305Aes {
        Aes256CtrPoly1305Aes::new(aes256ctr_poly1305aes::Key::from_slice(&self.0))
    }

    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("system randomness");
        let ct = self
            .cipher()
            .encrypt((&nonce).into(), plain)
            .expect("encryption cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    pub fn decrypt(&self, data: &[u8]) -> Option<Vec<u8>> {
        if data.len() < 32 {
            return None;
        }
        self.cipher().decrypt(data[..16].into(), &data[16..]).ok()
    }

    /// HMAC-SHA256 of `data` under this key.
    pub fn mac(&self, label: &str, data: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("any key length");
        m.update(label.as_bytes());
        m.update(&[0]);
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// A key for another purpose, derived from this one (HMAC-SHA256 with a label): the WAL
    /// archive's key is the repository's key material under another name, never a second
    /// secret to keep.
    pub fn derive(&self, label: &str) -> RepoKey {
        let mut k = [0u8; 64];
        k[..32].copy_from_slice(&self.mac(label, b"encryption"));
        k[32..].copy_from_slice(&self.mac(label, b"authentication"));
        RepoKey(k)
    }

    /// A key from its 64 bytes (AES-256 key, then Poly1305's k and r), as scrypt derives it.
    pub fn from_bytes(k: [u8; 64]) -> RepoKey {
        RepoKey(k)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<RepoKey> {
        let v = hex::decode(s.trim()).ok()?;
        Some(RepoKey(v.try_into().ok()?))
    }
}

/// A lock found in the repository, judged.
#[derive(Clone, Debug, Serialize)]
pub struct FoundLock {
    pub id: String,
    pub info: Option<LockInfo>,
    pub stale: Option<String>,
    /// Provably abandoned: taken on this host by a process that no longer runs. Such locks
    /// are removed by the next writer (restic's `check` and `prune` would refuse on them).
    pub dead: bool,
}

impl FoundLock {
    pub fn describe(&self) -> String {
        match &self.info {
            Some(i) => {
                let what = i
                    .lifeboat
                    .as_ref()
                    .map(|l| match &l.job {
                        Some(j) => format!("lifeboat {} {j}", l.command),
                        None => format!("lifeboat {}", l.command),
                    })
                    .unwrap_or_else(|| "another restic client".into());
                format!(
                    "{} lock {} held by {what} (pid {} on {}, since {})",
                    if i.exclusive { "exclusive" } else { "shared" },
                    &self.id[..8.min(self.id.len())],
                    i.pid,
                    i.hostname,
                    i.time
                )
            }
            None => format!("unreadable lock {}", &self.id[..8.min(self.id.len())]),
        }
    }
}

pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

fn process_alive(pid: u32) -> bool {
    // kill(pid, 0) checks existence without sending anything; EPERM means it exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Taken on this host by a process that is gone: nobody can be holding it.
fn abandoned(info: &LockInfo) -> bool {
    info.hostname == hostname() && !process_alive(info.pid)
}

fn staleness(info: &LockInfo, now: jiff::Timestamp) -> Option<String> {
    if abandoned(info) {
        return Some(format!(
            "process {} on this host is no longer running",
            info.pid
        ));
    }
    match info.time.parse::<jiff::Timestamp>() {
        Ok(t) => {
            let age = now.duration_since(t);
            if age.as_secs() > STALE_AFTER.as_secs() as i64 {
                Some(format!("not refreshed for {} minutes", age.as_secs() / 60))
            } else {
                None
            }
        }
        Err(_) => None,
    }
}

/// Read and judge every lock in the repository.
pub fn list_locks(objects: &dyn ObjectStore, key: &RepoKey) -> Result<Vec<FoundLock>> {
    let now = jiff::Timestamp::now();
    let mut out = Vec::new();
    for id in objects.list("locks")? {
        let Some(data) = objects.get(&format!("locks/{id}"))? else {
            continue; // removed meanwhile
        };
        let info = key.decrypt(&data).and_then(|plain| {
            // Repository v2 compresses unpacked files: a leading byte 2 means zstd follows
            // (restic writes its locks that way); `{` is plain JSON (Lifeboat's own).
            let json = match plain.first() {
                Some(2) => zstd::decode_all(&plain[1..]).ok()?,
                _ => plain,
            };
            serde_json::from_slice::<LockInfo>(&json).ok()
        });
        let stale = info.as_ref().and_then(|i| staleness(i, now));
        let dead = info.as_ref().is_some_and(abandoned);
        out.push(FoundLock {
            id,
            info,
            stale,
            dead,
        });
    }
    Ok(out)
}

/// A held lock; released (deleted) on drop. A background thread refreshes it.
pub struct LockGuard {
    state: Arc<Mutex<Option<String>>>,
    objects: Arc<dyn ObjectStore>,
    stop: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
    /// Stale locks seen (and ignored) when this lock was taken, not removed: they may belong
    /// to a process on another host that still runs.
    pub stale_seen: Vec<FoundLock>,
    /// Locks of processes on this host that no longer run, removed when this lock was taken.
    pub removed: Vec<FoundLock>,
}

fn write_lock(objects: &dyn ObjectStore, key: &RepoKey, info: &LockInfo) -> Result<String> {
    let plain = serde_json::to_vec(info).expect("lock serializes");
    let data = key.encrypt(&plain);
    let id = hex::encode(sha2::Sha256::digest(&data));
    objects.put(&format!("locks/{id}"), &data)?;
    Ok(id)
}

/// Take a lock, or fail naming the holder. `job` makes the lock conflict with any other live
/// lock of the same job.
pub fn acquire(
    objects: Arc<dyn ObjectStore>,
    key: &RepoKey,
    exclusive: bool,
    command: &str,
    job: Option<&str>,
) -> Result<LockGuard> {
    let conflicts = |locks: &[FoundLock], own: Option<&str>| -> Option<String> {
        locks
            .iter()
            .filter(|l| Some(l.id.as_str()) != own && l.stale.is_none())
            .find(|l| match &l.info {
                // A lock we cannot read may be anyone's: prune/forget must not run past it.
                None => exclusive,
                Some(i) => {
                    exclusive
                        || i.exclusive
                        || (job.is_some()
                            && i.lifeboat.as_ref().and_then(|lb| lb.job.as_deref()) == job)
                }
            })
            .map(|l| l.describe())
    };
    let locks = list_locks(&*objects, key)?;
    if let Some(holder) = conflicts(&locks, None) {
        return Err(locked(holder));
    }
    let info = LockInfo {
        time: jiff::Timestamp::now().to_string(),
        exclusive,
        hostname: hostname(),
        username: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
        pid: std::process::id(),
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        lifeboat: Some(LifeboatLock {
            command: command.into(),
            job: job.map(str::to_string),
        }),
    };
    let id = write_lock(&*objects, key, &info)?;
    // Two processes may have written at the same moment: look again and back off if a
    // conflicting lock appeared (both back off; a retry later succeeds).
    let locks = list_locks(&*objects, key)?;
    if let Some(holder) = conflicts(&locks, Some(&id)) {
        let _ = objects.delete(&format!("locks/{id}"));
        return Err(locked(holder));
    }
    // A writer cleans up after the dead: locks of processes on this host that no longer run
    // (a killed backup leaves its lock) go, so they do not pile up and block restic's check
    // and prune. Locks that are only old may be another host's live process: reported only.
    let mut removed = Vec::new();
    let mut stale_seen = Vec::new();
    for l in locks.into_iter().filter(|l| l.stale.is_some()) {
        if l.dead && objects.delete(&format!("locks/{}", l.id)).is_ok() {
            removed.push(l);
        } else {
            stale_seen.push(l);
        }
    }
    let state = Arc::new(Mutex::new(Some(id)));
    let stop = Arc::new(AtomicBool::new(false));
    let refresher = {
        let (state, stop, objects, key) =
            (state.clone(), stop.clone(), objects.clone(), key.clone());
        std::thread::spawn(move || {
            let mut waited = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                waited += Duration::from_millis(200);
                if waited < REFRESH_EVERY {
                    continue;
                }
                waited = Duration::ZERO;
                let mut info = info.clone();
                info.time = jiff::Timestamp::now().to_string();
                let mut cur = state.lock().unwrap();
                if let Ok(new_id) = write_lock(&*objects, &key, &info) {
                    if let Some(old) = cur.replace(new_id) {
                        let _ = objects.delete(&format!("locks/{old}"));
                    }
                }
            }
        })
    };
    Ok(LockGuard {
        state,
        objects,
        stop,
        refresher: Some(refresher),
        stale_seen,
        removed,
    })
}

fn locked(holder: String) -> Error {
    Error::new(Kind::Locked, format!("repository is locked: {holder}")).hint(
        "wait for it to finish; if that process is gone for good, `lifeboat repo unlock` removes stale locks",
    )
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        if let Some(id) = self.state.lock().unwrap().take() {
            let _ = self.objects.delete(&format!("locks/{id}"));
        }
    }
}

/// Remove stale locks (or all locks with `all`). Returns what was removed.
pub fn unlock(objects: &dyn ObjectStore, key: &RepoKey, all: bool) -> Result<Vec<FoundLock>> {
    let mut removed = Vec::new();
    for l in list_locks(objects, key)? {
        if all || l.stale.is_some() {
            objects.delete(&format!("locks/{}", l.id))?;
            removed.push(l);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::LocalObjects;

    fn key() -> RepoKey {
        RepoKey([7u8; 64])
    }

    #[test]
    fn locks_conflict_by_kind_and_job() {
        let dir = tempfile::tempdir().unwrap();
        let objects: Arc<dyn ObjectStore> = Arc::new(LocalObjects::new(dir.path()));
        let a = acquire(objects.clone(), &key(), false, "backup", Some("db")).unwrap();
        // another job may back up at the same time
        let b = acquire(objects.clone(), &key(), false, "backup", Some("etc")).unwrap();
        // the same job may not
        let e = acquire(objects.clone(), &key(), false, "backup", Some("db"))
            .err()
            .unwrap();
        assert_eq!(e.kind, Kind::Locked);
        assert!(e.to_string().contains("lifeboat backup db"), "{e}");
        // prune needs everyone gone
        assert!(acquire(objects.clone(), &key(), true, "forget", None).is_err());
        drop((a, b));
        let x = acquire(objects.clone(), &key(), true, "forget", None).unwrap();
        assert!(acquire(objects.clone(), &key(), false, "backup", Some("db")).is_err());
        drop(x);
        assert!(objects.list("locks").unwrap().is_empty());
    }

    #[test]
    fn dead_process_lock_is_stale_and_removable() {
        let dir = tempfile::tempdir().unwrap();
        let objects: Arc<dyn ObjectStore> = Arc::new(LocalObjects::new(dir.path()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let info = LockInfo {
            time: jiff::Timestamp::now().to_string(),
            exclusive: true,
            hostname: hostname(),
            username: "x".into(),
            pid,
            uid: 0,
            gid: 0,
            lifeboat: None,
        };
        write_lock(&*objects, &key(), &info).unwrap();
        let found = list_locks(&*objects, &key()).unwrap();
        assert!(found[0]
            .stale
            .as_deref()
            .unwrap()
            .contains("no longer running"));
        assert!(found[0].dead);
        assert_eq!(unlock(&*objects, &key(), false).unwrap().len(), 1);
        assert!(objects.list("locks").unwrap().is_empty());
        // A stale exclusive lock does not block the next writer, which removes it (its process
        // is provably gone) and says so.
        write_lock(&*objects, &key(), &info).unwrap();
        let g = acquire(objects.clone(), &key(), false, "backup", None).unwrap();
        assert_eq!(g.removed.len(), 1);
        assert!(g.stale_seen.is_empty());
        assert_eq!(
            objects.list("locks").unwrap().len(),
            1,
            "only the new lock is left"
        );
        drop(g);
        assert!(objects.list("locks").unwrap().is_empty());
        // A lock of another host, only old, is reported and kept: its process may still run.
        let other = LockInfo {
            hostname: "elsewhere".into(),
            time: "2020-01-01T00:00:00Z".into(),
            ..info
        };
        write_lock(&*objects, &key(), &other).unwrap();
        let g = acquire(objects.clone(), &key(), false, "backup", None).unwrap();
        assert!(g.removed.is_empty());
        assert_eq!(g.stale_seen.len(), 1);
        drop(g);
        assert_eq!(objects.list("locks").unwrap().len(), 1);
    }
}
