//! What every operation runs in: the plan loaded from its file (and where it lives), the state
//! directory, the actor, the evidence log it records into, the repositories it opens and locks;
//! and what every long-running part shares: notifications (`notify`), the process's termination
//! signal (`signals`), failpoints for tests (`failpoint`).
//!
//! Above `core`, `store` and `evidence`; below every room that acts (`protect`, `failover`,
//! `server`). It knows nothing of PostgreSQL.

pub mod failpoint;
pub mod identity;
pub mod notify;
pub mod signals;

use std::path::{Path, PathBuf};
use std::time::Instant;

use lifeboat_core::Error;
use lifeboat_core::{parse_plan, Diagnostic, Plan};
use lifeboat_store::{RepoSpec, Store};

use lifeboat_evidence::{default_actor, Draft, Event, Evidence, EvidenceError};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read plan {path} (create one with `lifeboat init`, or point --plan at yours)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

#[derive(Clone)]
pub struct Context {
    pub plan: Plan,
    pub plan_path: PathBuf,
    /// Directory of the plan file: relative paths in the plan are relative to it.
    pub base: PathBuf,
    pub state_dir: PathBuf,
    pub actor: String,
}

/// Replace the state file `path` with `body` so that a reader (or a crash) sees the old file or
/// the new one, never a part: write a temporary file beside it, fsync, rename, fsync the
/// directory (made if missing).
pub fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("a state file has a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

pub fn load_plan(path: &Path) -> Result<Plan, PlanError> {
    let bytes = std::fs::read(path).map_err(|source| PlanError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let file = path.display().to_string();
    let src = lifeboat_core::load::plan_text(&bytes, &file).map_err(PlanError::Invalid)?;
    parse_plan(src, &file).map_err(PlanError::Invalid)
}

impl Context {
    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let plan = load_plan(path)?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let state_dir = match std::env::var_os("LIFEBOAT_STATE_DIR") {
            Some(d) => PathBuf::from(d),
            None => base.join(plan.state_dir.as_deref().unwrap_or(".lifeboat")),
        };
        Ok(Self {
            plan,
            plan_path: abs,
            base,
            state_dir,
            actor: default_actor(),
        })
    }

    /// The plan's repository names, for messages.
    pub fn repo_names(&self) -> String {
        let names: Vec<&str> = self.plan.repositories.keys().map(String::as_str).collect();
        names.join(", ")
    }

    pub fn repo_spec(&self, name: &str) -> Result<RepoSpec, Error> {
        let repo = self.plan.repositories.get(name).ok_or_else(|| {
            Error::new(
                lifeboat_core::Kind::Input,
                format!(
                    "no repository `{name}` in the plan (declared: {})",
                    self.repo_names()
                ),
            )
        })?;
        let mut spec = RepoSpec::from_plan(name, repo, &self.base)?;
        // Keep rustic_core's cache with the rest of Lifeboat's state, not in $HOME.
        spec.cache_dir = Some(self.state_dir.join("cache"));
        Ok(spec)
    }

    pub fn open_repo(&self, name: &str) -> Result<Store, Error> {
        Store::open(&self.repo_spec(name)?)
    }

    /// The repository commands use when none is named: the only one, or the first job's.
    pub fn default_repo(&self) -> Result<String, Error> {
        if self.plan.repositories.len() == 1 {
            return Ok(self
                .plan
                .repositories
                .keys()
                .next()
                .cloned()
                .unwrap_or_default());
        }
        // Otherwise the repository every backup job writes to, if they agree.
        let used: std::collections::BTreeSet<&str> = self
            .plan
            .backups
            .values()
            .filter_map(|j| self.plan.job_repository(j))
            .collect();
        if used.len() == 1 {
            return Ok(used.into_iter().next().unwrap_or_default().to_string());
        }
        Err(Error::new(
            lifeboat_core::Kind::Input,
            format!(
                "the plan has {} repositories: name one with --repo ({})",
                self.plan.repositories.len(),
                self.repo_names()
            ),
        ))
    }

    /// The plan's postgres services, or only `only` (which must be one).
    pub fn postgres_services(&self, only: Option<&str>) -> Result<Vec<String>, Error> {
        let all: Vec<String> = self
            .plan
            .services
            .iter()
            .filter(|(_, s)| matches!(s, lifeboat_core::plan::Service::Postgres { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        match only {
            None => Ok(all),
            Some(s) if all.iter().any(|a| a == s) => Ok(vec![s.to_string()]),
            Some(s) => Err(Error::new(
                lifeboat_core::Kind::Input,
                format!(
                    "`{s}` is not a postgres service of the plan (postgres services: {})",
                    if all.is_empty() {
                        "none".into()
                    } else {
                        all.join(", ")
                    }
                ),
            )),
        }
    }

    pub fn evidence(&self) -> Result<Evidence, EvidenceError> {
        Evidence::open(&self.state_dir)
    }

    /// Record one act in the evidence log.
    /// Lock a repository for `command`. Locks of dead processes on this host that the lock
    /// removed on its way are recorded in the evidence log (as `repo unlock` would be).
    pub fn lock_repo(
        &self,
        store: &lifeboat_store::repo::Store,
        exclusive: bool,
        command: &str,
        job: Option<&str>,
    ) -> Result<lifeboat_store::lock::LockGuard, Error> {
        let started = Instant::now();
        let guard = store.lock(exclusive, command, job)?;
        if !guard.removed.is_empty() {
            let removed: Vec<String> = guard
                .removed
                .iter()
                .map(|l| format!("{} ({})", l.describe(), l.stale.clone().unwrap_or_default()))
                .collect();
            let figures = serde_json::json!({
                "removed": removed,
                "why": "their processes no longer run on this host",
                "by": command,
            });
            // The lock is taken: a failed record must not fail the command, but is said.
            if let Err(e) = self.record("repo unlock", &store.spec.name, "ok", started, figures) {
                eprintln!("warning: removed abandoned locks but could not record it: {e}");
            }
        }
        Ok(guard)
    }

    pub fn record(
        &self,
        command: &str,
        target: &str,
        outcome: &str,
        started: Instant,
        figures: serde_json::Value,
    ) -> Result<Event, EvidenceError> {
        let mut ev = self.evidence()?;
        ev.append(
            &self.actor,
            &Draft {
                command: command.into(),
                plan: self.plan.name.clone(),
                target: target.into(),
                outcome: outcome.into(),
                duration_ms: started.elapsed().as_millis() as u64,
                figures,
            },
        )
    }
}
