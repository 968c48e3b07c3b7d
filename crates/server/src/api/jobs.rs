//! Jobs started through the API: backups, verifications, restores into a sandbox, drills and
//! copies run as `lifeboat` child processes (the same commands as on the command line, so
//! the same locks, checks and evidence); failovers and switchovers are handed to the
//! service's monitor. Each job is a file `<state>/jobs/<id>.json`, replaced atomically at
//! every change, so a restarted daemon still answers for it: a job that was running when the
//! daemon stopped is `interrupted` (its process got SIGTERM with the daemon).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lifeboat_context::Context;
use serde::{Deserialize, Serialize};

/// One job.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    pub id: String,
    /// `backup`, `verify`, `restore`, `drill`, `copy`, `failover`, `switchover`.
    pub kind: String,
    /// What it acts on: a backup job, a service, a drill, `FROM→TO`.
    pub target: String,
    /// The command line that does the same.
    pub command: String,
    /// The token that started it (the actor in the evidence log).
    pub actor: String,
    /// `running`, `cancelling`, `succeeded`, `failed`, `cancelled`, `interrupted`.
    pub state: String,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The current step while it runs: `{step, unit, done, total}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub progress: Option<serde_json::Value>,
    /// What the command reported (its `--json` output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The process (child jobs), while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub pid: Option<u32>,
    /// The arguments of a child job, for conflicts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(ignore)]
    pub args: Vec<String>,
}

impl Job {
    pub fn active(&self) -> bool {
        matches!(self.state.as_str(), "running" | "cancelling")
    }
}

#[derive(Clone)]
pub struct Jobs {
    dir: PathBuf,
    all: Arc<Mutex<BTreeMap<String, Job>>>,
}

const KEEP: usize = 200;

fn new_id() -> String {
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    format!(
        "{}-{}",
        jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S"),
        hex::encode(b)
    )
}

impl Jobs {
    /// The jobs on record; those a stopped daemon left running are interrupted now.
    pub fn open(state_dir: &Path) -> Jobs {
        let dir = state_dir.join("jobs");
        let mut all = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().and_then(|x| x.to_str()) != Some("json") {
                    continue;
                }
                let Some(mut j) = std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Job>(&b).ok())
                else {
                    continue;
                };
                if j.active() {
                    j.state = "interrupted".into();
                    j.error = Some("the daemon stopped while it ran".into());
                    j.hint =
                        Some("start it again; `lifeboat audit list` shows how far it got".into());
                    j.finished = Some(jiff::Timestamp::now().to_string());
                    j.pid = None;
                    write(&dir, &j);
                }
                all.insert(j.id.clone(), j);
            }
        }
        Jobs {
            dir,
            all: Arc::new(Mutex::new(all)),
        }
    }

    pub fn list(&self) -> Vec<Job> {
        let mut v: Vec<Job> = self
            .all
            .lock()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        for j in v.iter_mut() {
            self.fill_progress(j);
        }
        v
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        let mut j = self.all.lock().ok()?.get(id).cloned()?;
        self.fill_progress(&mut j);
        Some(j)
    }

    fn fill_progress(&self, j: &mut Job) {
        if j.active() {
            if let Some(p) = std::fs::read(self.dir.join(format!("{}.progress", j.id)))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                j.progress = Some(p);
            }
        }
    }

    /// A running job that does what `kind`/`target` would (they would fight over the same
    /// locks, or the same service).
    pub fn conflict(&self, kind: &str, target: &str, args: &[String]) -> Option<Job> {
        let all = self.all.lock().ok()?;
        all.values()
            .find(|j| {
                j.active()
                    && ((!args.is_empty() && j.args == args)
                        || (j.target == target && j.kind == kind)
                        || (matches!(kind, "failover" | "switchover")
                            && matches!(j.kind.as_str(), "failover" | "switchover")
                            && j.target == target))
            })
            .cloned()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Job)) {
        let Ok(mut all) = self.all.lock() else { return };
        if let Some(j) = all.get_mut(id) {
            f(j);
            write(&self.dir, j);
        }
    }

    fn insert(&self, j: Job) {
        let _ = std::fs::create_dir_all(&self.dir);
        write(&self.dir, &j);
        if let Ok(mut all) = self.all.lock() {
            all.insert(j.id.clone(), j);
            // The oldest finished jobs go.
            while all.len() > KEEP {
                let Some(old) = all
                    .values()
                    .filter(|j| !j.active())
                    .min_by(|a, b| a.created.cmp(&b.created))
                    .map(|j| j.id.clone())
                else {
                    break;
                };
                all.remove(&old);
                for ext in ["json", "out", "log", "progress"] {
                    let _ = std::fs::remove_file(self.dir.join(format!("{old}.{ext}")));
                }
            }
        }
    }

    fn fresh(&self, kind: &str, target: &str, command: String, actor: &str) -> Job {
        Job {
            id: new_id(),
            kind: kind.into(),
            target: target.into(),
            command,
            actor: actor.into(),
            state: "running".into(),
            created: jiff::Timestamp::now().to_string(),
            finished: None,
            duration_ms: None,
            exit_code: None,
            progress: None,
            result: None,
            error: None,
            hint: None,
            pid: None,
            args: Vec::new(),
        }
    }

    /// Run `lifeboat --json ARGS` as a child acting as `actor`.
    pub fn start_child(
        &self,
        ctx: &Context,
        kind: &str,
        target: &str,
        args: Vec<String>,
        actor: &str,
    ) -> Result<Job, lifeboat_core::Error> {
        let mut j = self.fresh(kind, target, format!("lifeboat {}", args.join(" ")), actor);
        j.args = args.clone();
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            lifeboat_core::Error::new(
                lifeboat_core::Kind::Io,
                format!("{}: {e}", self.dir.display()),
            )
        })?;
        let out_path = self.dir.join(format!("{}.out", j.id));
        let log_path = self.dir.join(format!("{}.log", j.id));
        let progress = self.dir.join(format!("{}.progress", j.id));
        let io = |p: &Path, e: std::io::Error| {
            lifeboat_core::Error::new(lifeboat_core::Kind::Io, format!("{}: {e}", p.display()))
        };
        let out = std::fs::File::create(&out_path).map_err(|e| io(&out_path, e))?;
        let log = std::fs::File::create(&log_path).map_err(|e| io(&log_path, e))?;
        let mut full = vec!["--json".to_string()];
        full.extend(args);
        let mut child = crate::schedule::spawn(
            ctx,
            &full,
            actor,
            out,
            log,
            &[("LIFEBOAT_PROGRESS_FILE", progress.as_os_str())],
        )
        .map_err(|e| {
            lifeboat_core::Error::new(
                lifeboat_core::Kind::Internal,
                format!("starting {}: {e}", j.command),
            )
        })?;
        j.pid = child.id();
        self.insert(j.clone());
        lifeboat_failover::log::log(
            "job",
            &j.id,
            serde_json::json!({"action": "started", "run": j.command, "actor": j.actor}),
        );
        let jobs = self.clone();
        let id = j.id.clone();
        let t0 = std::time::Instant::now();
        tokio::spawn(async move {
            let status = child.wait().await;
            let code = status.as_ref().ok().and_then(|s| s.code());
            let output = std::fs::read(&out_path).unwrap_or_default();
            let result: Option<serde_json::Value> = serde_json::from_slice(&output).ok();
            let tail = std::fs::read_to_string(&log_path)
                .ok()
                .map(|l| {
                    l.lines()
                        .rev()
                        .find(|x| !x.trim().is_empty())
                        .unwrap_or("")
                        .to_string()
                })
                .unwrap_or_default();
            jobs.update(&id, |j| {
                let cancelled = j.state == "cancelling";
                j.pid = None;
                j.exit_code = code;
                j.finished = Some(jiff::Timestamp::now().to_string());
                j.duration_ms = Some(t0.elapsed().as_millis() as u64);
                j.progress = None;
                j.state = match (cancelled, code) {
                    (true, _) => "cancelled",
                    (false, Some(0)) => "succeeded",
                    _ => "failed",
                }
                .into();
                if j.state != "succeeded" {
                    j.error = result
                        .as_ref()
                        .and_then(|r| r["error"].as_str().map(str::to_string))
                        .or_else(|| (!tail.is_empty()).then(|| tail.clone()))
                        .or_else(|| Some(format!("exited with {code:?}")));
                    if cancelled {
                        j.error = Some(format!(
                            "cancelled: {}",
                            j.error.clone().unwrap_or_default()
                        ));
                    }
                }
                j.result = result;
            });
            let _ = std::fs::remove_file(jobs.dir.join(format!("{id}.progress")));
            if let Some(j) = jobs.get(&id) {
                lifeboat_failover::log::log(
                    "job",
                    &id,
                    serde_json::json!({"action": "finished", "state": j.state, "exit": j.exit_code, "duration_ms": j.duration_ms}),
                );
            }
        });
        Ok(j)
    }

    /// Run `work` (blocking) as a job: failovers and switchovers handed to the monitor.
    pub fn start_task(
        &self,
        kind: &str,
        target: &str,
        command: String,
        actor: &str,
        work: impl FnOnce() -> Result<serde_json::Value, lifeboat_core::Error> + Send + 'static,
    ) -> Job {
        let j = self.fresh(kind, target, command, actor);
        self.insert(j.clone());
        let jobs = self.clone();
        let id = j.id.clone();
        let t0 = std::time::Instant::now();
        tokio::spawn(async move {
            let r = tokio::task::spawn_blocking(work).await;
            jobs.update(&id, |j| {
                j.finished = Some(jiff::Timestamp::now().to_string());
                j.duration_ms = Some(t0.elapsed().as_millis() as u64);
                match r {
                    Ok(Ok(v)) => {
                        j.state = "succeeded".into();
                        j.result = Some(v);
                    }
                    Ok(Err(e)) => {
                        j.state = "failed".into();
                        j.error = Some(e.message.clone());
                        j.hint = e.hint.clone();
                    }
                    Err(e) => {
                        j.state = "failed".into();
                        j.error = Some(format!("the job's thread failed: {e}"));
                    }
                }
            });
        });
        j
    }

    /// Ask a child job to stop (SIGTERM: the command stops as it does on Ctrl-C, releasing
    /// its locks). Err: why it cannot be cancelled.
    pub fn cancel(&self, id: &str) -> Result<Job, String> {
        let Ok(mut all) = self.all.lock() else {
            return Err("the job table is unavailable".into());
        };
        let Some(j) = all.get_mut(id) else {
            return Err("no such job".into());
        };
        if !j.active() {
            return Err(format!("the job has already ended ({})", j.state));
        }
        let Some(pid) = j.pid else {
            return Err(format!(
                "a {} cannot be cancelled once it has started: it runs to its end or aborts on its own checks",
                j.kind
            ));
        };
        // SAFETY: kill(2) of our own child, not yet reaped (its waiter clears the pid).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        j.state = "cancelling".into();
        write(&self.dir, j);
        Ok(j.clone())
    }
}

fn write(dir: &Path, j: &Job) {
    let p = dir.join(format!("{}.json", j.id));
    let tmp = dir.join(format!("{}.json.tmp", j.id));
    if std::fs::write(&tmp, serde_json::to_vec_pretty(j).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, &p);
    }
}
