//! Replicated buckets (`kind: bucket`): `lifeboat serve` keeps a replica of the source bucket —
//! a full comparison of both listings at start and every `reconcile` (copies what differs,
//! handles deletions per `deletes`), and between them, every `interval`, a pass that lists the
//! source only and copies what is new or changed against what this process knows it copied.
//! Copies stream in pieces, several at once (`parallel`), with the objects' metadata. The state
//! (`<state>/buckets/SERVICE.json`) says how far the replica is behind: the instant up to which
//! every source object is in the replica (`replicated_until`), what is pending, the last full
//! reconcile. `verify` compares both listings and a sample of contents; `restore_from_replica`
//! copies back what the source lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_core::plan::{BucketSpec, Deletes, Service, Severity};
use lifeboat_core::{Error, Kind};
use lifeboat_store::bucket::{Bucket, Copied, Object};
use serde::{Deserialize, Serialize};

use lifeboat_context::Context;

/// A bucket service as the replicator needs it.
#[derive(Clone, Debug)]
pub struct Replicated {
    pub service: String,
    pub source: BucketSpec,
    pub replica: BucketSpec,
    pub deletes: Deletes,
    pub interval: Duration,
    pub reconcile: Duration,
    pub parallel: usize,
}

impl Replicated {
    pub fn from_plan(ctx: &Context, name: &str) -> Option<Replicated> {
        let Service::Bucket {
            source,
            replica,
            deletes,
            interval,
            reconcile,
            parallel,
            ..
        } = ctx.plan.services.get(name)?
        else {
            return None;
        };
        Some(Replicated {
            service: name.to_string(),
            source: source.clone(),
            replica: replica.clone(),
            deletes: deletes.unwrap_or_default(),
            interval: interval.map(|d| d.std()).unwrap_or(Duration::from_secs(10)),
            reconcile: reconcile
                .map(|d| d.std())
                .unwrap_or(Duration::from_secs(3600)),
            parallel: parallel.unwrap_or(8).clamp(1, 64) as usize,
        })
    }
}

/// Every bucket service of the plan.
pub fn replicated_services(ctx: &Context) -> Vec<Replicated> {
    ctx.plan
        .services
        .keys()
        .filter_map(|n| Replicated::from_plan(ctx, n))
        .collect()
}

/// Open both sides, each with its own keys.
pub fn open(r: &Replicated) -> Result<(Bucket, Bucket), Error> {
    let side = |name: &'static str, spec: &BucketSpec| {
        let keys = lifeboat_store::s3::keys(
            &spec.access_key_id,
            &spec.secret_access_key,
            &format!("the {name} bucket's keys"),
        )?;
        Bucket::open(name, &spec.url, keys)
    };
    Ok((side("source", &r.source)?, side("replica", &r.replica)?))
}

/// What the replica holds of a key, as copied by this process (or confirmed in a reconcile).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    size: u64,
    source_etag: Option<String>,
}

/// What one pass found to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Todo {
    pub copy: Vec<Object>,
    pub delete: Vec<String>,
    /// In the replica, no longer at the source, kept (`deletes: keep`).
    pub kept: usize,
}

/// Whether replica object `r` holds source object `o`'s version: the same size, and the same
/// ETag — or, for a copy made in parts (which has an ETag of its own), the source ETag its
/// metadata names (`replica_etag`, asked only then).
fn holds(
    o: &Object,
    r: &Object,
    replica_etag: &mut dyn FnMut(&str) -> Result<Option<String>, Error>,
) -> Result<bool, Error> {
    if r.size != o.size || o.etag.is_none() {
        return Ok(false);
    }
    if r.etag == o.etag {
        return Ok(true);
    }
    Ok(replica_etag(&o.key)? == o.etag)
}

/// A full comparison: the source's listing against the replica's (`replica_etag`: what the
/// replica object says it holds, asked only where the ETags differ: a copy made in parts has
/// its own ETag).
fn full_diff(
    source: &[Object],
    replica: &[Object],
    deletes: Deletes,
    held: &mut BTreeMap<String, Held>,
    replica_etag: &mut dyn FnMut(&str) -> Result<Option<String>, Error>,
) -> Result<Todo, Error> {
    let rep: BTreeMap<&str, &Object> = replica.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut todo = Todo::default();
    held.clear();
    for o in source {
        let same = match rep.get(o.key.as_str()) {
            None => false,
            Some(r) => holds(o, r, replica_etag)?,
        };
        if same {
            held.insert(
                o.key.clone(),
                Held {
                    size: o.size,
                    source_etag: o.etag.clone(),
                },
            );
        } else {
            todo.copy.push(o.clone());
        }
    }
    let src: std::collections::BTreeSet<&str> = source.iter().map(|o| o.key.as_str()).collect();
    for r in replica {
        if !src.contains(r.key.as_str()) {
            match deletes {
                Deletes::Propagate => todo.delete.push(r.key.clone()),
                Deletes::Keep => todo.kept += 1,
            }
        }
    }
    Ok(todo)
}

/// Between reconciles: the source's listing against what the replica is known to hold.
fn incremental_diff(source: &[Object], deletes: Deletes, held: &BTreeMap<String, Held>) -> Todo {
    let mut todo = Todo::default();
    for o in source {
        let known = held.get(&o.key).is_some_and(|h| {
            h.size == o.size && h.source_etag.is_some() && h.source_etag == o.etag
        });
        if !known {
            todo.copy.push(o.clone());
        }
    }
    if deletes == Deletes::Propagate {
        let src: std::collections::BTreeSet<&str> = source.iter().map(|o| o.key.as_str()).collect();
        todo.delete = held
            .keys()
            .filter(|k| !src.contains(k.as_str()))
            .cloned()
            .collect();
    }
    todo
}

/// What the daemon keeps in `<state>/buckets/SERVICE.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Every object at the source when this instant's listing began, and every one modified
    /// before the oldest pending one, is in the replica (Unix ms). Its age is the lag.
    pub replicated_until_ms: Option<i64>,
    pub pending_objects: u64,
    pub pending_bytes: u64,
    /// The oldest pending object's modification time (Unix ms).
    pub oldest_pending_ms: Option<i64>,
    pub source_objects: u64,
    pub source_bytes: u64,
    pub last_full_reconcile_ms: Option<i64>,
    pub last_pass: Option<PassSummary>,
    /// Totals, kept in this file across the daemon's restarts.
    pub copied_objects: u64,
    pub copied_bytes: u64,
    pub deleted_objects: u64,
    /// Why the last pass failed (cleared when one succeeds), and since when it fails.
    pub error: Option<String>,
    pub hint: Option<String>,
    pub failing_since_ms: Option<i64>,
    pub last_failure_ms: Option<i64>,
    pub time_ms: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PassSummary {
    /// `full` or `incremental`.
    pub kind: String,
    pub started_ms: i64,
    pub ms: u64,
    pub source_objects: u64,
    pub copied: u64,
    pub copied_bytes: u64,
    pub deleted: u64,
    /// At the source, gone before they could be read.
    pub vanished: u64,
    /// Changed at the source while being copied (copied again by the next pass).
    pub changed: u64,
    /// In the replica only, kept (`deletes: keep`).
    pub kept: u64,
    /// Copies that failed (the first error is the pass's error).
    pub failed: u64,
}

pub fn state_path(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join("buckets").join(format!("{service}.json"))
}

pub fn load_state(state_dir: &Path, service: &str) -> Option<State> {
    serde_json::from_slice(&std::fs::read(state_path(state_dir, service)).ok()?).ok()
}

/// Write the state file; a failure (a full disk) is logged: `status` and the metrics would
/// show an older state meanwhile.
fn save_state(state_dir: &Path, service: &str, st: &State, log: Log) {
    let path = state_path(state_dir, service);
    let body = serde_json::to_vec_pretty(st).unwrap_or_default();
    if let Err(e) = lifeboat_context::write_atomically(&path, &body) {
        log(
            "error",
            service,
            serde_json::json!({"error": format!("{}: {e}", path.display()), "note": "replication goes on; `status` and the metrics show the last state written"}),
        );
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// One service's replicator: both sides open, and what the replica is known to hold.
pub struct Replicator {
    pub r: Replicated,
    source: Bucket,
    replica: Bucket,
    held: BTreeMap<String, Held>,
    pub state: State,
    state_dir: PathBuf,
    stop: Arc<AtomicBool>,
    log: Log,
}

/// The daemon's log (`event`, `service`, fields).
pub type Log = fn(&str, &str, serde_json::Value);

impl Replicator {
    pub fn new(
        ctx: &Context,
        r: Replicated,
        stop: Arc<AtomicBool>,
        log: Log,
    ) -> Result<Self, Error> {
        let (source, replica) = open(&r)?;
        let state = load_state(&ctx.state_dir, &r.service).unwrap_or_default();
        Ok(Replicator {
            r,
            source,
            replica,
            held: BTreeMap::new(),
            state,
            state_dir: ctx.state_dir.clone(),
            stop,
            log,
        })
    }

    fn save(&mut self) {
        self.state.time_ms = now_ms();
        save_state(&self.state_dir, &self.r.service, &self.state, self.log);
    }

    /// One pass: list, compare, copy and delete; the state kept up to date along the way.
    pub fn pass(&mut self, full: bool) -> Result<PassSummary, Error> {
        let started = Instant::now();
        let started_ms = now_ms();
        let source = self.source.list()?;
        let todo = if full {
            let replica = self.replica.list()?;
            let rb = &self.replica;
            full_diff(
                &source,
                &replica,
                self.r.deletes,
                &mut self.held,
                &mut |k| rb.source_etag_of(k),
            )?
        } else {
            incremental_diff(&source, self.r.deletes, &self.held)
        };
        self.state.source_objects = source.len() as u64;
        self.state.source_bytes = source.iter().map(|o| o.size).sum();
        self.pending(&todo.copy, started_ms);
        self.save();
        let mut sum = PassSummary {
            kind: if full { "full" } else { "incremental" }.into(),
            started_ms,
            source_objects: source.len() as u64,
            kept: todo.kept as u64,
            ..Default::default()
        };
        let (done, first_error) = self.copy_all(&todo.copy, &mut sum);
        for key in &todo.delete {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            self.replica.delete(key)?;
            self.held.remove(key);
            sum.deleted += 1;
        }
        // Pending now: what could not be copied (changed under the copy, or failed).
        let left: Vec<Object> = todo
            .copy
            .iter()
            .filter(|o| !done.contains(&o.key))
            .cloned()
            .collect();
        self.pending(&left, started_ms);
        if full && first_error.is_none() && !self.stop.load(Ordering::Relaxed) {
            self.state.last_full_reconcile_ms = Some(started_ms);
        }
        self.state.copied_objects += sum.copied;
        self.state.copied_bytes += sum.copied_bytes;
        self.state.deleted_objects += sum.deleted;
        sum.ms = started.elapsed().as_millis() as u64;
        self.state.last_pass = Some(sum.clone());
        self.save();
        match first_error {
            Some(e) => Err(e),
            None => Ok(sum),
        }
    }

    /// What is still to copy, and the instant up to which the replica is whole.
    fn pending(&mut self, left: &[Object], listed_ms: i64) {
        self.state.pending_objects = left.len() as u64;
        self.state.pending_bytes = left.iter().map(|o| o.size).sum();
        self.state.oldest_pending_ms = left.iter().filter_map(|o| o.modified_ms).min();
        self.state.replicated_until_ms = Some(match self.state.oldest_pending_ms {
            Some(m) => m.min(listed_ms),
            // Pending objects without a time: nothing can be claimed beyond the last value.
            None if !left.is_empty() => self.state.replicated_until_ms.unwrap_or(0),
            None => listed_ms,
        });
    }

    /// Copy `objects` with `parallel` workers; the keys now held, and the first error.
    fn copy_all(
        &mut self,
        objects: &[Object],
        sum: &mut PassSummary,
    ) -> (std::collections::BTreeSet<String>, Option<Error>) {
        let next = AtomicU64::new(0);
        let finished = AtomicU64::new(0);
        let copied_bytes = AtomicU64::new(0);
        let results: Mutex<Vec<(String, Result<Copied, Error>)>> = Mutex::new(Vec::new());
        let (source, replica, stop) = (&self.source, &self.replica, &self.stop);
        let workers = self.r.parallel.min(objects.len().max(1));
        // A long pass (a first copy of a large bucket) says how far it is: the state file
        // every 2 s, the log every 30 s.
        let mut progress = self.state.clone();
        let (state_dir, service, log) = (&self.state_dir, &self.r.service, self.log);
        let total = objects.len() as u64;
        let total_bytes: u64 = objects.iter().map(|o| o.size).sum();
        std::thread::scope(|s| {
            let running: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(o) = objects.get(i) else { return };
                        let r = source.copy_to(replica, &o.key);
                        if let Ok(Copied::Done { bytes, .. }) = &r {
                            copied_bytes.fetch_add(*bytes, Ordering::Relaxed);
                        }
                        results.lock().expect("results").push((o.key.clone(), r));
                        finished.fetch_add(1, Ordering::Relaxed);
                    })
                })
                .collect();
            let mut written = Instant::now();
            let mut logged = Instant::now();
            while running.iter().any(|h| !h.is_finished()) {
                std::thread::sleep(Duration::from_millis(100));
                if written.elapsed() < Duration::from_secs(2) {
                    continue;
                }
                written = Instant::now();
                let done = finished.load(Ordering::Relaxed);
                progress.pending_objects = total - done;
                progress.pending_bytes =
                    total_bytes.saturating_sub(copied_bytes.load(Ordering::Relaxed));
                progress.time_ms = now_ms();
                save_state(state_dir, service, &progress, log);
                if logged.elapsed() >= Duration::from_secs(30) {
                    logged = Instant::now();
                    log(
                        "bucket progress",
                        service,
                        serde_json::json!({"copied": done, "of": total}),
                    );
                }
            }
        });
        let mut done = std::collections::BTreeSet::new();
        let mut first_error = None;
        for (key, r) in results.into_inner().expect("results") {
            match r {
                Ok(Copied::Done { etag, bytes }) => {
                    sum.copied += 1;
                    sum.copied_bytes += bytes;
                    self.held.insert(
                        key.clone(),
                        Held {
                            size: bytes,
                            source_etag: etag,
                        },
                    );
                    done.insert(key);
                }
                Ok(Copied::Vanished) => {
                    sum.vanished += 1;
                    done.insert(key);
                }
                Ok(Copied::Changed) => sum.changed += 1,
                Err(e) => {
                    sum.failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        (done, first_error)
    }
}

/// Run one bucket service's replication until `stop`: a full comparison first and every
/// `reconcile`, incremental passes every `interval`. A failing pass is logged, recorded once in
/// the evidence log (and again when it recovers), notified, and retried after a delay that
/// doubles up to 5 minutes (or the interval, when that is longer), never in a busy loop.
pub async fn run(
    ctx: Context,
    r: Replicated,
    mut stop: tokio::sync::watch::Receiver<bool>,
    notifier: lifeboat_context::notify::Notifier,
    log: Log,
) {
    // A pass runs on a blocking thread: it stops between objects when this turns true.
    let flag = Arc::new(AtomicBool::new(false));
    {
        let (flag, mut stop) = (flag.clone(), stop.clone());
        tokio::spawn(async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
            flag.store(true, Ordering::Relaxed);
        });
    }
    let service = r.service.clone();
    let record = |outcome: &str, started: Instant, figures: serde_json::Value| {
        if let Err(e) = ctx.record("bucket replication", &service, outcome, started, figures) {
            log(
                "error",
                &service,
                serde_json::json!({"error": format!("evidence log: {e}")}),
            );
        }
    };
    // Opened at the first pass, and again after a pass that could not open the sides.
    let mut rep: Option<Replicator> = None;
    let mut next_full = Instant::now();
    let mut failing = false;
    let mut wait = r.interval;
    while !*stop.borrow() {
        let full = Instant::now() >= next_full;
        let (c, f, r2, taken) = (ctx.clone(), flag.clone(), r.clone(), rep.take());
        let started = Instant::now();
        let joined = tokio::task::spawn_blocking(move || {
            let mut rep = match taken {
                Some(rep) => rep,
                None => match Replicator::new(&c, r2, f, log) {
                    Ok(rep) => rep,
                    Err(e) => return (None, Err(e)),
                },
            };
            let out = rep.pass(full);
            (Some(rep), out)
        })
        .await;
        let outcome;
        (rep, outcome) = joined.unwrap_or_else(|e| {
            (
                None,
                Err(Error::new(Kind::Internal, format!("replication pass: {e}"))),
            )
        });
        // The state says how it went, also when the sides could not even be opened.
        let mut st = rep
            .as_ref()
            .map(|r| r.state.clone())
            .or_else(|| load_state(&ctx.state_dir, &service))
            .unwrap_or_default();
        match outcome {
            Ok(sum) => {
                if full {
                    next_full = Instant::now() + r.reconcile;
                }
                if full || sum.copied + sum.deleted + sum.changed > 0 {
                    log(
                        "bucket",
                        &service,
                        serde_json::to_value(&sum).unwrap_or_default(),
                    );
                }
                if full || failing {
                    record(
                        "ok",
                        started,
                        serde_json::json!({"pass": sum, "recovered": failing}),
                    );
                }
                (st.error, st.hint, st.failing_since_ms) = (None, None, None);
                failing = false;
                wait = r.interval;
            }
            Err(e) => {
                let longest = Duration::from_secs(300).max(r.interval);
                wait = (if failing { wait } else { r.interval } * 2).min(longest);
                log(
                    "bucket",
                    &service,
                    serde_json::json!({"error": e.message, "hint": e.hint, "retry_in_s": wait.as_secs_f64()}),
                );
                st.error = Some(e.message.clone());
                st.hint = e.hint.clone();
                st.last_failure_ms = Some(now_ms());
                st.failing_since_ms.get_or_insert(now_ms());
                if !failing {
                    let figures = serde_json::json!({"error": e.message, "hint": e.hint});
                    record("failed", started, figures.clone());
                    notifier.send(lifeboat_context::notify::Note {
                        severity: Severity::P2,
                        event: "bucket replication".into(),
                        service: service.clone(),
                        summary: format!("replication of {service} fails: {}", e.message),
                        details: figures,
                        only: None,
                    });
                }
                failing = true;
            }
        }
        st.time_ms = now_ms();
        save_state(&ctx.state_dir, &service, &st, log);
        if let Some(rep) = rep.as_mut() {
            rep.state = st;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

/// What `verify` found comparing the two sides.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Comparison {
    pub source_objects: usize,
    pub replica_objects: usize,
    /// At the source, not in the replica.
    pub missing: Vec<String>,
    /// In both with another size or version.
    pub differ: Vec<String>,
    /// In the replica only (kept deletions, or to be deleted with `deletes: propagate`).
    pub extra: Vec<String>,
    /// Sampled objects whose content was read from both sides, and those that did not match.
    pub sampled: usize,
    pub content_differs: Vec<String>,
    pub deletes: Deletes,
}

impl Comparison {
    /// Whether the replica holds what it should.
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.differ.is_empty()
            && self.content_differs.is_empty()
            && (self.deletes == Deletes::Keep || self.extra.is_empty())
    }
}

/// Compare both listings, and the content of `sample` objects (spread over the key range).
pub fn verify(r: &Replicated, sample: usize) -> Result<Comparison, Error> {
    let (source, replica) = open(r)?;
    let s = source.list()?;
    let p = replica.list()?;
    let mut held = BTreeMap::new();
    let todo = full_diff(&s, &p, r.deletes, &mut held, &mut |k| {
        replica.source_etag_of(k)
    })?;
    let rep: std::collections::BTreeSet<&str> = p.iter().map(|o| o.key.as_str()).collect();
    let mut c = Comparison {
        source_objects: s.len(),
        replica_objects: p.len(),
        deletes: r.deletes,
        ..Default::default()
    };
    for o in &todo.copy {
        if rep.contains(o.key.as_str()) {
            c.differ.push(o.key.clone());
        } else {
            c.missing.push(o.key.clone());
        }
    }
    let src: std::collections::BTreeSet<&str> = s.iter().map(|o| o.key.as_str()).collect();
    c.extra = p
        .iter()
        .filter(|o| !src.contains(o.key.as_str()))
        .map(|o| o.key.clone())
        .collect();
    let same: Vec<&String> = held.keys().collect();
    let step = (same.len() / sample.max(1)).max(1);
    for key in same.iter().step_by(step).take(sample) {
        c.sampled += 1;
        let (a, b) = (source.hash(key)?, replica.hash(key)?);
        if a.is_some() && a != b {
            c.content_differs.push((*key).clone());
        }
    }
    Ok(c)
}

/// What `restore SERVICE --from-replica` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Restored {
    pub copied: u64,
    pub copied_bytes: u64,
    /// Present at the source with other content, left alone (without `overwrite`).
    pub left_differing: Vec<String>,
}

/// Copy back from the replica what the source lost: objects missing at the source, and with
/// `overwrite` those whose content differs.
pub fn restore_from_replica(r: &Replicated, overwrite: bool) -> Result<Restored, Error> {
    let (source, replica) = open(r)?;
    let s = source.list()?;
    let p = replica.list()?;
    let at_source: BTreeMap<&str, &Object> = s.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut out = Restored::default();
    for o in &p {
        let copy = match at_source.get(o.key.as_str()) {
            None => true,
            Some(src) => {
                let same = holds(src, o, &mut |k| replica.source_etag_of(k))?;
                if !same && !overwrite {
                    out.left_differing.push(o.key.clone());
                }
                !same && overwrite
            }
        };
        if copy {
            if let Copied::Done { bytes, .. } = replica.copy_to(&source, &o.key)? {
                out.copied += 1;
                out.copied_bytes += bytes;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(key: &str, size: u64, etag: &str) -> Object {
        Object {
            key: key.into(),
            size,
            etag: Some(etag.into()),
            modified_ms: Some(1000),
        }
    }

    #[test]
    fn a_full_comparison_copies_what_differs_and_deletes_per_policy() {
        let source = [
            o("a", 1, "e1"),
            o("b", 2, "e2"),
            o("c", 3, "e3-2"),
            o("d", 4, "e4"),
        ];
        // b changed (other etag, same size), c copied in parts (its own etag, metadata says
        // e3-2), d missing, x only in the replica.
        let replica = [
            o("a", 1, "e1"),
            o("b", 2, "zz"),
            o("c", 3, "other"),
            o("x", 9, "e9"),
        ];
        let asked = std::cell::RefCell::new(Vec::new());
        let mut held = BTreeMap::new();
        let mut meta = |k: &str| -> Result<Option<String>, Error> {
            asked.borrow_mut().push(k.to_string());
            Ok(match k {
                "c" => Some("e3-2".into()),
                _ => Some("old".into()),
            })
        };
        let t = full_diff(&source, &replica, Deletes::Keep, &mut held, &mut meta).unwrap();
        let copy: Vec<&str> = t.copy.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(copy, ["b", "d"]);
        assert!(t.delete.is_empty());
        assert_eq!(t.kept, 1);
        assert_eq!(
            *asked.borrow(),
            ["b", "c"],
            "metadata only where the ETags differ"
        );
        assert_eq!(held.keys().collect::<Vec<_>>(), ["a", "c"]);
        let t = full_diff(&source, &replica, Deletes::Propagate, &mut held, &mut meta).unwrap();
        assert_eq!(t.delete, ["x"]);
    }

    #[test]
    fn an_incremental_pass_copies_new_and_changed_against_what_is_held() {
        let mut held = BTreeMap::new();
        held.insert(
            "a".to_string(),
            Held {
                size: 1,
                source_etag: Some("e1".into()),
            },
        );
        held.insert(
            "gone".to_string(),
            Held {
                size: 1,
                source_etag: Some("g".into()),
            },
        );
        let source = [o("a", 1, "e1"), o("b", 2, "e2")];
        let t = incremental_diff(&source, Deletes::Keep, &held);
        assert_eq!(t.copy, [o("b", 2, "e2")]);
        assert!(t.delete.is_empty());
        let source = [o("a", 1, "e1-changed")];
        let t = incremental_diff(&source, Deletes::Propagate, &held);
        assert_eq!(t.copy.len(), 1);
        assert_eq!(t.delete, ["gone"]);
    }
}
