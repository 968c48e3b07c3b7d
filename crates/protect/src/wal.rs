//! WAL archiving as PostgreSQL calls it (`archive_command`, `restore_command`), and what the
//! archive can recover: timelines, gaps, and the recoverable window per base backup.
//!
//! `archive_command` runs once per 16 MiB segment, so opening the repository (a scrypt key
//! derivation) every time would cost more than the upload. The WAL key, derived from the
//! repository key, is cached in `<state>/keys/` (mode 0600) after the first open; it is trusted
//! only when it matches the archive's `key_check`, and the repository is opened again when not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use lifeboat_core::wal::{segment_name, segno_of, Lsn, WalFile, DEFAULT_SEGMENT_SIZE};
use lifeboat_core::{Error, Kind};
use lifeboat_store::walarchive::{EntryMeta, PushOutcome, WalArchive};
use lifeboat_store::RepoKey;
use serde::Serialize;

use crate::pgbackup::{base_backups, BaseBackup};
use lifeboat_context::Context;

/// The repository holding a service's WAL.
pub fn wal_repo(ctx: &Context, service: &str) -> Result<String, Error> {
    match ctx.plan.services.get(service) {
        Some(lifeboat_core::plan::Service::Postgres { .. }) => {}
        Some(s) => {
            return Err(Error::new(
                Kind::Input,
                format!(
                    "service {service} is a {} service: only postgres services archive WAL",
                    s.kind()
                ),
            ))
        }
        None => {
            return Err(Error::new(
                Kind::Input,
                format!("no service `{service}` in the plan"),
            ))
        }
    }
    ctx.plan
        .wal_repository(service)
        .map(str::to_string)
        .ok_or_else(|| {
            Error::new(
                Kind::Input,
                format!("service {service}: no repository for its WAL archive"),
            )
            .hint("set `wal_repository` on the service, or give it a base-backup job")
        })
}

fn key_cache_path(ctx: &Context, display: &str) -> PathBuf {
    use sha2::Digest;
    let h = hex::encode(&sha2::Sha256::digest(display.as_bytes())[..8]);
    ctx.state_dir.join("keys").join(format!("wal-{h}.key"))
}

fn write_key_cache(path: &Path, key: &RepoKey) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(key.to_hex().as_bytes()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if ok.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The WAL archive of a service, opened as cheaply as is safe.
pub fn archive(ctx: &Context, service: &str) -> Result<(WalArchive, String), Error> {
    let repo = wal_repo(ctx, service)?;
    let plan_repo =
        ctx.plan.repositories.get(&repo).ok_or_else(|| {
            Error::new(Kind::Input, format!("no repository `{repo}` in the plan"))
        })?;
    let spec = lifeboat_store::RepoSpec::locate(&repo, plan_repo, &ctx.base)?;
    let cache = key_cache_path(ctx, &spec.display);
    if let Some(key) = std::fs::read_to_string(&cache)
        .ok()
        .and_then(|s| RepoKey::from_hex(&s))
    {
        let a = WalArchive::new(spec.objects()?, service, key);
        if let Ok(Some(meta)) = a.meta() {
            if meta.key_check == a.key_check() {
                return Ok((a, repo));
            }
        }
    }
    let store = ctx.open_repo(&repo).map_err(|e| {
        if e.kind == Kind::Key {
            e.context(format!(
                "the WAL archive of {service} needs the key of repository {repo}"
            ))
        } else {
            e
        }
    })?;
    let a = store.wal_archive(service);
    write_key_cache(&cache, &lifeboat_store::walarchive::wal_key(store.key()));
    Ok((a, repo))
}

/// The context with `service`'s WAL archive (and base backups) taken from repository `repo`
/// instead of the plan's: a restore from a cross-region copy.
pub fn using_repository(ctx: &Context, service: &str, repo: &str) -> Result<Context, Error> {
    if !ctx.plan.repositories.contains_key(repo) {
        return Err(Error::new(
            Kind::Input,
            format!("no repository `{repo}` in the plan ({})", ctx.repo_names()),
        ));
    }
    let mut c = ctx.clone();
    match c.plan.services.get_mut(service) {
        Some(lifeboat_core::plan::Service::Postgres { wal_repository, .. }) => {
            *wal_repository = Some(repo.to_string());
            Ok(c)
        }
        _ => Err(Error::new(
            Kind::Input,
            format!("`{service}` is not a postgres service of the plan"),
        )),
    }
}

/// WAL files copied into a cross-region copy of a repository.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WalCopy {
    pub copied: usize,
    pub already_there: usize,
    pub bytes: u64,
}

/// Copy the WAL archive of every postgres service archiving into repository `from` (opened as
/// `src`) to `dest`: each file decrypted with the source's key, checked, and archived again
/// under the target's (the copies may have different keys). Without it a cross-region copy
/// holds base backups only, and a restore from it cannot go past the last one.
pub fn copy_archives(
    ctx: &Context,
    src: &lifeboat_store::Store,
    dest: &lifeboat_store::Store,
    from: &str,
) -> Result<WalCopy, Error> {
    let mut out = WalCopy::default();
    for (name, svc) in &ctx.plan.services {
        if !matches!(svc, lifeboat_core::plan::Service::Postgres { .. })
            || ctx.plan.wal_repository(name) != Some(from)
        {
            continue;
        }
        let a = src.wal_archive(name);
        if a.meta()?.is_none() {
            continue;
        }
        let b = dest.wal_archive(name);
        let have: std::collections::BTreeSet<String> = b.names()?.into_iter().collect();
        for n in a.names()? {
            if have.contains(&n) {
                out.already_there += 1;
                continue;
            }
            let Some(bytes) = a.fetch(&n)? else { continue };
            match b.push(&n, &bytes)? {
                lifeboat_store::walarchive::PushOutcome::Stored { bytes } => {
                    out.copied += 1;
                    out.bytes += bytes;
                }
                lifeboat_store::walarchive::PushOutcome::AlreadyArchived => out.already_there += 1,
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PushReport {
    pub name: String,
    pub outcome: String,
    pub bytes: u64,
    pub ms: u64,
    /// Who archived it: `daemon` (handed over to a running `lifeboat serve`) or `process`.
    #[serde(default)]
    pub via: String,
}

/// `archive_command`: archive the file at `path` (relative to the data directory PostgreSQL
/// runs us in). A running daemon for this state directory is handed the file over its local
/// socket and answers once the file is durable; without one (or when it cannot take this
/// file) this process archives it itself. Either way 0 is returned only once it is durable.
pub fn push(ctx: &Context, service: &str, path: &Path) -> Result<PushReport, Error> {
    let started = Instant::now();
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if crate::walsock::enabled() {
        match crate::walsock::hand_over(ctx, service, &absolute) {
            crate::walsock::Handoff::Done(r) => {
                return r.map(|mut r| {
                    r.ms = started.elapsed().as_millis() as u64;
                    r
                })
            }
            crate::walsock::Handoff::Unavailable(None) => {}
            crate::walsock::Handoff::Unavailable(Some(why)) => {
                // PostgreSQL keeps archive_command's stderr in its log: say why this segment
                // did not go through the daemon (it is archived all the same).
                eprintln!("lifeboat wal push: archiving without the daemon: {why}");
            }
        }
    }
    let name = file_name(path);
    let data = std::fs::read(path).map_err(|e| {
        Error::new(
            Kind::Source,
            format!("cannot read WAL file {}: {e}", path.display()),
        )
    })?;
    let (a, _) = archive(ctx, service)?;
    let mut r = push_data(ctx, &a, &name, &data, started)?;
    r.via = "process".into();
    Ok(r)
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Archive `data` as WAL file `name` into `a` (the daemon and the process path alike).
pub(crate) fn push_data(
    ctx: &Context,
    a: &WalArchive,
    name: &str,
    data: &[u8],
    started: Instant,
) -> Result<PushReport, Error> {
    let result = a.push(name, data);
    if let Err(e) = &result {
        if e.kind == lifeboat_core::Kind::Conflict {
            // A conflict is an incident: keep it in the evidence log (best effort: the
            // archiver may run as a user that cannot write there).
            let _ = ctx.record(
                "wal push",
                &a.service,
                "conflict",
                started,
                serde_json::json!({"file": name, "error": e.message}),
            );
        }
    }
    let (outcome, bytes) = match result? {
        PushOutcome::Stored { bytes } => ("stored", bytes),
        PushOutcome::AlreadyArchived => ("already archived", 0),
    };
    Ok(PushReport {
        name: name.to_string(),
        outcome: outcome.into(),
        bytes,
        ms: started.elapsed().as_millis() as u64,
        via: String::new(),
    })
}

pub fn prefetch_dir(ctx: &Context, service: &str) -> PathBuf {
    ctx.state_dir.join("walcache").join(service)
}

fn write_atomic(dest: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = PathBuf::from(format!("{}.lifeboat-tmp", dest.display()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, dest)
}

/// What `wal fetch --has-target` prints (into the server's log) before it reports a damaged
/// segment as not archived; `restore` finds it there and names the segment.
pub const DAMAGED_MARKER: &str = ": DAMAGED: ";

/// `restore_command`: fetch `name` into `dest`. `Ok(false)` when the archive does not have it
/// (PostgreSQL asks for files past the end of the archive and for history files that may not
/// exist). With `prefetch > 0`, the next segments are fetched in parallel into a cache so
/// replay does not wait one round trip per segment.
pub fn fetch(
    ctx: &Context,
    service: &str,
    name: &str,
    dest: &Path,
    prefetch: usize,
) -> Result<bool, Error> {
    let cache = prefetch_dir(ctx, service);
    let cached = cache.join(name);
    if WalFile::parse(name, DEFAULT_SEGMENT_SIZE).is_some()
        && cached.exists()
        && (std::fs::rename(&cached, dest).is_ok() || std::fs::copy(&cached, dest).is_ok())
    {
        let _ = std::fs::remove_file(&cached);
        return Ok(true);
    }
    let (a, _) = archive(ctx, service)?;
    let a = Arc::new(a);
    let seg_size = a.meta()?.map_or(DEFAULT_SEGMENT_SIZE, |m| m.seg_size);
    let mut ahead = Vec::new();
    if let Some(WalFile::Segment { timeline, segno }) = WalFile::parse(name, seg_size) {
        // Drop cached segments replay has passed.
        if let Ok(rd) = std::fs::read_dir(&cache) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if matches!(WalFile::parse(&n, seg_size), Some(WalFile::Segment { segno: s, .. }) if s <= segno)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if prefetch > 0 && std::fs::create_dir_all(&cache).is_ok() {
            for i in 1..=prefetch as u64 {
                let n = segment_name(timeline, segno + i, seg_size);
                if !cache.join(&n).exists() {
                    ahead.push(n);
                }
            }
        }
    }
    let handles: Vec<_> = ahead
        .into_iter()
        .map(|n| {
            let a = a.clone();
            let path = cache.join(&n);
            std::thread::spawn(move || {
                if let Ok(Some(data)) = a.fetch(&n) {
                    let _ = write_atomic(&path, &data);
                }
            })
        })
        .collect();
    let mut found = a.fetch(name);
    for h in handles {
        let _ = h.join();
    }
    // The segment being streamed, as received so far: replay reads it to its last record.
    if matches!(found, Ok(None))
        && matches!(
            WalFile::parse(name, seg_size),
            Some(WalFile::Segment { .. })
        )
    {
        found = a.fetch_live(name);
    }
    match found? {
        Some(data) => {
            write_atomic(dest, &data).map_err(|e| {
                Error::new(Kind::Io, format!("cannot write {}: {e}", dest.display()))
            })?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// One archived segment, as the inventory sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Seg {
    pub name: String,
    pub first_xact_time: Option<i64>,
    pub last_xact_time: Option<i64>,
    pub pushed_at: i64,
    pub restore_points: Vec<lifeboat_core::wal::RestorePoint>,
    /// Streamed and not complete yet: the archive holds it as received so far.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub streaming: bool,
}

/// Everything in a service's archive.
pub struct Inventory {
    pub seg_size: u64,
    pub system_id: Option<String>,
    /// (timeline, segno) → segment.
    pub segments: BTreeMap<(u32, u64), Seg>,
    pub histories: BTreeSet<u32>,
    /// Timeline → the LSN where it branched from its parent (from history files).
    pub branch_points: BTreeMap<u32, Lsn>,
    pub other: usize,
}

fn meta_cache(ctx: &Context, service: &str) -> PathBuf {
    ctx.state_dir.join("walmeta").join(service)
}

/// List the archive and read each segment's meta (cached locally: archived files never
/// change).
pub fn inventory(ctx: &Context, a: &WalArchive) -> Result<Inventory, Error> {
    let meta = a.meta()?;
    let seg_size = meta.as_ref().map_or(DEFAULT_SEGMENT_SIZE, |m| m.seg_size);
    let mut inv = Inventory {
        seg_size,
        system_id: meta.map(|m| m.system_id),
        segments: BTreeMap::new(),
        histories: BTreeSet::new(),
        branch_points: BTreeMap::new(),
        other: 0,
    };
    let cache = meta_cache(ctx, &a.service);
    let _ = std::fs::create_dir_all(&cache);
    for name in a.names()? {
        match WalFile::parse(&name, seg_size) {
            Some(WalFile::Segment { timeline, segno }) => {
                let cpath = cache.join(format!("{name}.json"));
                let m: EntryMeta = match std::fs::read(&cpath)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                {
                    Some(m) => m,
                    None => {
                        let Some(m) = a.entry(&name)? else { continue };
                        let _ = std::fs::write(&cpath, serde_json::to_vec(&m).unwrap_or_default());
                        m
                    }
                };
                let s = m.summary.unwrap_or_default();
                inv.segments.insert(
                    (timeline, segno),
                    Seg {
                        name,
                        first_xact_time: s.first_xact_time,
                        last_xact_time: s.last_xact_time,
                        pushed_at: m.pushed_at,
                        restore_points: s.restore_points,
                        streaming: false,
                    },
                );
            }
            Some(WalFile::History { timeline }) => {
                inv.histories.insert(timeline);
            }
            _ => inv.other += 1,
        }
    }
    // The segment being streamed extends the archive by what was received so far.
    if let Some(m) = a.live_entry()? {
        if let Some(WalFile::Segment { timeline, segno }) = WalFile::parse(&m.name, seg_size) {
            let s = m.summary.unwrap_or_default();
            inv.segments.entry((timeline, segno)).or_insert(Seg {
                name: m.name,
                first_xact_time: s.first_xact_time,
                last_xact_time: s.last_xact_time,
                pushed_at: m.pushed_at,
                restore_points: s.restore_points,
                streaming: true,
            });
        }
    }
    // The newest history file lists every ancestor's branch point.
    if let Some(&newest) = inv.histories.iter().next_back() {
        if let Some(h) = a.fetch(&format!("{newest:08X}.history"))? {
            for line in String::from_utf8_lossy(&h).lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() >= 2 {
                    if let (Ok(parent), Ok(lsn)) = (f[0].parse::<u32>(), f[1].parse::<Lsn>()) {
                        // Timeline parent+1 … the child of `parent` starts at `lsn`; the
                        // child is the next entry's parent or the file's own timeline.
                        inv.branch_points.insert(parent, lsn);
                    }
                }
            }
        }
    }
    Ok(inv)
}

impl Inventory {
    /// The timeline recovery reads segment `segno` from, following the newest timeline's
    /// history (the branch point of timeline `p` ends `p` and starts the next one).
    fn timeline_for(&self, start_tli: u32, segno: u64) -> u32 {
        let mut tli = start_tli;
        for (&parent, lsn) in self.branch_points.range(start_tli..) {
            if parent == tli && segno >= segno_of(*lsn, self.seg_size) {
                // The child of `parent`: the next timeline in the chain, or the newest one (the
                // history file's own timeline) after the last branch point.
                tli = self
                    .branch_points
                    .range(parent + 1..)
                    .next()
                    .map(|(&p, _)| p)
                    .or_else(|| self.histories.iter().next_back().copied())
                    .unwrap_or(parent + 1);
            }
        }
        tli
    }

    /// From a base backup: walk segments along the timeline history until the first missing
    /// one. Returns the last segment present in the run, and the first missing (if any segment
    /// exists after it).
    pub fn reachable(&self, start_tli: u32, start_segno: u64) -> Reach {
        let newest = self.segments.keys().map(|&(_, s)| s).max().unwrap_or(0);
        let mut last: Option<&Seg> = None;
        let mut last_xact: Option<i64> = None;
        let mut points = Vec::new();
        let mut segno = start_segno;
        loop {
            let tli = self.timeline_for(start_tli, segno);
            match self.segments.get(&(tli, segno)) {
                Some(s) => {
                    last_xact = s.last_xact_time.or(last_xact);
                    points.extend(s.restore_points.iter().cloned());
                    last = Some(s);
                    segno += 1;
                }
                None => {
                    let gap = (segno <= newest).then(|| segment_name(tli, segno, self.seg_size));
                    return Reach {
                        last_segment: last.map(|s| s.name.clone()),
                        last_xact_time: last_xact,
                        last_pushed_at: last.map(|s| s.pushed_at),
                        first_missing: gap,
                        restore_points: points,
                    };
                }
            }
        }
    }

    /// Holes between the first and last archived segment of each timeline.
    pub fn gaps(&self) -> Vec<Gap> {
        let mut out = Vec::new();
        let mut by_tli: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for &(t, s) in self.segments.keys() {
            by_tli.entry(t).or_default().push(s);
        }
        for (t, segs) in by_tli {
            for w in segs.windows(2) {
                if w[1] > w[0] + 1 {
                    out.push(Gap {
                        timeline: t,
                        first_missing: segment_name(t, w[0] + 1, self.seg_size),
                        last_missing: segment_name(t, w[1] - 1, self.seg_size),
                        count: w[1] - w[0] - 1,
                    });
                }
            }
        }
        out
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Reach {
    pub last_segment: Option<String>,
    /// Unix microseconds of the last commit/abort that recovery can replay.
    pub last_xact_time: Option<i64>,
    pub last_pushed_at: Option<i64>,
    /// The missing segment that stops replay, when later segments exist.
    pub first_missing: Option<String>,
    pub restore_points: Vec<lifeboat_core::wal::RestorePoint>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Gap {
    pub timeline: u32,
    pub first_missing: String,
    pub last_missing: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackupWindow {
    pub snapshot: String,
    pub start_lsn: String,
    pub timeline: u32,
    /// Earliest recovery target (Unix microseconds): the end of the backup.
    pub from: i64,
    pub reach: Reach,
}

#[derive(Clone, Debug, Serialize)]
pub struct WalReport {
    pub service: String,
    pub repository: String,
    pub system_id: Option<String>,
    pub segments: usize,
    pub timelines: Vec<u32>,
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    pub gaps: Vec<Gap>,
    pub backups: Vec<BackupWindow>,
    /// The recoverable window: from the oldest base backup's end to the last replayable
    /// commit of the newest one (Unix microseconds).
    pub window: Option<(i64, i64)>,
    pub ok: bool,
    pub problems: Vec<String>,
    /// With `--read-data`: the objects that failed to authenticate (None: not read back).
    pub damaged: Option<Vec<Damaged>>,
    /// The segment being streamed (`wal_stream`), held as received so far: the window's end
    /// is its newest commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streaming: Option<String>,
}

pub fn window_of(inv: &Inventory, b: &BaseBackup) -> BackupWindow {
    BackupWindow {
        snapshot: b.snapshot.clone(),
        start_lsn: b.start_lsn.to_string(),
        timeline: b.timeline,
        from: b.stop_time,
        reach: inv.reachable(b.timeline, segno_of(b.start_lsn, inv.seg_size)),
    }
}

pub fn fmt_micros(t: i64) -> String {
    jiff::Timestamp::from_microsecond(t)
        .map(|t| t.round(jiff::Unit::Millisecond).unwrap_or(t).to_string())
        .unwrap_or_else(|_| t.to_string())
}

/// An archived object that failed to authenticate or decode when read back.
#[derive(Clone, Debug, Serialize)]
pub struct Damaged {
    pub name: String,
    pub error: String,
}

/// Read back and authenticate every archived object (`names`), a few at a time: the damaged
/// ones, with why. An object that cannot be read for another reason (storage down) is an
/// error of the whole check, not a finding.
fn read_back(a: &Arc<WalArchive>, names: Vec<String>) -> Result<Vec<Damaged>, Error> {
    let names = Arc::new(names);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (a, names, next) = (a.clone(), names.clone(), next.clone());
            std::thread::spawn(move || -> Result<Vec<Damaged>, Error> {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(name) = names.get(i) else {
                        return Ok(out);
                    };
                    match a.fetch(name) {
                        Ok(_) => {}
                        Err(e) if matches!(e.kind, Kind::Integrity | Kind::Key) => {
                            out.push(Damaged {
                                name: name.clone(),
                                error: e.message,
                            })
                        }
                        Err(e) => return Err(e),
                    }
                }
            })
        })
        .collect();
    let mut damaged = Vec::new();
    for w in workers {
        damaged.extend(
            w.join()
                .map_err(|_| Error::new(Kind::Internal, "a WAL read-back thread panicked"))??,
        );
    }
    damaged.sort_by(|x, y| x.name.cmp(&y.name));
    Ok(damaged)
}

/// `lifeboat wal verify`: timelines, gaps, and the recoverable window. With `read_data`,
/// every archived object is read back and authenticated too; a damaged segment cuts the
/// window as a missing one does (names and cached metadata alone never notice a flipped bit).
pub fn verify(ctx: &Context, service: &str, read_data: bool) -> Result<WalReport, Error> {
    let started = Instant::now();
    let result = survey(ctx, service, read_data);
    let (outcome, figures) = match &result {
        Ok(r) => (
            if r.ok { "ok" } else { "failed" },
            serde_json::json!({"segments": r.segments, "gaps": r.gaps.len(), "window": r.window, "problems": r.problems,
                "read_data": read_data, "damaged": r.damaged.as_ref().map(|d| d.iter().map(|d| d.name.clone()).collect::<Vec<_>>())}),
        ),
        Err(e) => ("failed", serde_json::json!({"error": e.message})),
    };
    ctx.record("wal verify", service, outcome, started, figures)?;
    result
}

/// What `verify` finds, without recording it in the evidence log (the daemon's metrics read
/// it every minute).
pub fn survey(ctx: &Context, service: &str, read_data: bool) -> Result<WalReport, Error> {
    (|| -> Result<WalReport, Error> {
        let (a, repo) = archive(ctx, service)?;
        let mut inv = inventory(ctx, &a)?;
        let mut problems = Vec::new();
        let damaged = if read_data {
            let names: Vec<String> = a
                .names()?
                .into_iter()
                .filter(|n| {
                    matches!(
                        WalFile::parse(n, inv.seg_size),
                        Some(WalFile::Segment { .. }) | Some(WalFile::History { .. })
                    )
                })
                .collect();
            let damaged = read_back(&Arc::new(a), names)?;
            for d in &damaged {
                if let Some(WalFile::Segment { timeline, segno }) =
                    WalFile::parse(&d.name, inv.seg_size)
                {
                    inv.segments.remove(&(timeline, segno));
                }
                problems.push(format!("{}: {}", d.name, d.error));
            }
            Some(damaged)
        } else {
            None
        };
        let store = ctx.open_repo(&repo)?;
        let backups = base_backups(&store, service)?;
        let windows: Vec<BackupWindow> = backups.iter().map(|b| window_of(&inv, b)).collect();
        let gaps = inv.gaps();
        for g in &gaps {
            problems.push(format!(
                "timeline {}: {} segment(s) missing: {}..{}",
                g.timeline, g.count, g.first_missing, g.last_missing
            ));
        }
        if backups.is_empty() {
            problems.push(format!(
                "no base backup of {service} in repository {repo}: WAL alone cannot be restored"
            ));
        }
        if inv.segments.is_empty() {
            problems.push(format!(
                "no WAL archived for {service}: is archive_command set to `lifeboat wal push {service} %p`?"
            ));
        }
        for w in &windows {
            if inv.segments.is_empty() {
                break;
            }
            if w.reach.last_segment.is_none() {
                problems.push(format!(
                    "base backup {} needs segment {} which is not archived",
                    &w.snapshot[..8],
                    segment_name(
                        w.timeline,
                        segno_of(w.start_lsn.parse().unwrap_or_default(), inv.seg_size),
                        inv.seg_size
                    )
                ));
            }
        }
        let window = match (windows.first(), windows.last()) {
            (Some(first), Some(last)) => last
                .reach
                .last_xact_time
                .or(last.reach.last_pushed_at)
                .map(|end| (first.from, end)),
            _ => None,
        };
        Ok(WalReport {
            service: service.into(),
            repository: repo,
            system_id: inv.system_id.clone(),
            segments: inv.segments.len(),
            timelines: inv
                .segments
                .keys()
                .map(|&(t, _)| t)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            first_segment: inv.segments.values().next().map(|s| s.name.clone()),
            last_segment: inv.segments.values().next_back().map(|s| s.name.clone()),
            gaps,
            backups: windows,
            window,
            ok: problems.is_empty(),
            problems,
            damaged,
            streaming: inv
                .segments
                .values()
                .find(|s| s.streaming)
                .map(|s| s.name.clone()),
        })
    })()
}

/// Delete WAL no retained base backup needs: segments before the oldest retained backup's
/// start segment (on every timeline), and backup-label files before it. History files stay.
/// Returns the names deleted (or that would be, with `dry_run`).
pub fn retain(
    ctx: &Context,
    service: &str,
    retained: &[BaseBackup],
    dry_run: bool,
) -> Result<Vec<String>, Error> {
    let Some(oldest) = retained.iter().map(|b| b.start_lsn).min() else {
        // No base backup left: WAL cannot be restored without one, but deleting it would
        // throw away the only copy of recent history. Keep it.
        return Ok(Vec::new());
    };
    let (a, _) = archive(ctx, service)?;
    let meta = a.meta()?;
    let seg_size = meta.map_or(DEFAULT_SEGMENT_SIZE, |m| m.seg_size);
    let keep_from = segno_of(oldest, seg_size);
    let mut gone = Vec::new();
    for name in a.names()? {
        let old = match WalFile::parse(&name, seg_size) {
            Some(WalFile::Segment { segno, .. })
            | Some(WalFile::Partial { segno, .. })
            | Some(WalFile::BackupLabel { segno, .. }) => segno < keep_from,
            _ => false,
        };
        if old {
            if !dry_run {
                a.delete(&name)?;
                let _ = std::fs::remove_file(meta_cache(ctx, service).join(format!("{name}.json")));
            }
            gone.push(name);
        }
    }
    Ok(gone)
}
