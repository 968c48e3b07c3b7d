//! Repositories: opening, initialising, backing up, restoring, listing, forgetting, copying and
//! checking, on the restic repository format (version 2, zstd) through rustic_core.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lifeboat_core::plan;
use lifeboat_core::repo_url::RepoUrl;
use rustic_backend::BackendOptions;
use rustic_core::repofile::SnapshotFile;
use rustic_core::{
    BackupOptions, CheckOptions, ConfigOptions, Credentials, IndexedFull, KeyOptions, OpenStatus,
    PathList, PruneOptions, ReadSubsetOption, Repository, RepositoryOptions, SnapshotOptions,
};
use serde::Serialize;

use crate::error::{rustic, Error, Kind, Result};
use crate::lock::{self, FoundLock, LockGuard, RepoKey};
use crate::objects::{LocalObjects, ObjectStore, S3Objects};
use crate::progress::Bars;

/// A repository as the plan names it, with its password resolved (in memory only).
#[derive(Clone)]
pub struct RepoSpec {
    pub name: String,
    pub url: RepoUrl,
    /// The URL shown to people (local path made absolute; no credentials).
    pub display: String,
    password: String,
    pub compression: Option<i32>,
    s3_keys: Option<(String, String)>,
    /// Where rustic_core may cache index and tree packs (default: no cache).
    pub cache_dir: Option<PathBuf>,
}

impl std::fmt::Debug for RepoSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoSpec({} at {})", self.name, self.display)
    }
}

fn run_key_command(cmd: &str) -> Result<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::new(Kind::Key, format!("cannot run key_command: {e}")))?;
    if !out.status.success() {
        return Err(
            Error::new(Kind::Key, format!("key_command failed ({})", out.status))
                .hint("run the key_command by hand to see why it fails"),
        );
    }
    let s = String::from_utf8(out.stdout)
        .map_err(|_| Error::new(Kind::Key, "key_command printed non-UTF-8 output"))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

impl RepoSpec {
    /// Resolve a plan repository: make local paths absolute (relative to the plan's directory)
    /// and read the password from its file, variable or command.
    pub fn from_plan(name: &str, repo: &plan::Repository, base: &Path) -> Result<Self> {
        let mut spec = Self::locate(name, repo, base)?;
        spec.password = Self::resolve_password(name, repo, base)?;
        Ok(spec)
    }

    /// Where a repository is and how to reach its storage, without its key: enough to read
    /// and write raw objects ([`RepoSpec::objects`]), not to open it.
    pub fn locate(name: &str, repo: &plan::Repository, base: &Path) -> Result<Self> {
        let url = RepoUrl::parse(&repo.url).map_err(|e| Error::new(Kind::Input, e))?;
        let (url, display) = match url {
            RepoUrl::Local(p) => {
                let abs = base.join(&p);
                let s = abs.to_string_lossy().into_owned();
                (RepoUrl::Local(s.clone()), s)
            }
            other => (other, repo.url.split('?').next().unwrap_or("").to_string()),
        };
        let s3_keys = crate::s3::keys(
            &repo.access_key_id,
            &repo.secret_access_key,
            &format!("repository {name}"),
        )?;
        Ok(Self {
            name: name.to_string(),
            url,
            display,
            password: String::new(),
            compression: repo.compression,
            s3_keys,
            cache_dir: None,
        })
    }

    fn resolve_password(name: &str, repo: &plan::Repository, base: &Path) -> Result<String> {
        let password = if let Some(f) = &repo.key_file {
            let path = base.join(f);
            std::fs::read_to_string(&path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| {
                    Error::new(
                        Kind::Key,
                        format!("cannot read key file {} of repository {name}: {e}", path.display()),
                    )
                    .hint("create it (e.g. `head -c 32 /dev/urandom | base64 > KEYFILE; chmod 600 KEYFILE`) or fix `key_file` in the plan")
                })?
        } else if let Some(v) = &repo.key_env {
            std::env::var(v).map_err(|_| {
                Error::new(
                    Kind::Key,
                    format!("environment variable {v} (the key of repository {name}) is not set"),
                )
                .hint(format!("export {v}=... before running lifeboat"))
            })?
        } else if let Some(c) = &repo.key_command {
            run_key_command(c).map_err(|e| e.context(format!("repository {name}")))?
        } else {
            return Err(Error::new(
                Kind::Key,
                format!("repository {name} has no key_file, key_env or key_command"),
            ));
        };
        if password.is_empty() {
            return Err(Error::new(
                Kind::Key,
                format!("the key of repository {name} is empty"),
            ));
        }
        Ok(password)
    }

    /// Raw object access to the repository's storage (no key needed).
    pub fn objects(&self) -> Result<Arc<dyn ObjectStore>> {
        Ok(match &self.url {
            RepoUrl::Local(p) => Arc::new(LocalObjects::new(p)),
            RepoUrl::S3 { .. } => {
                let (o, d) = self.s3_options()?.expect("s3");
                Arc::new(S3Objects::new(&o, d)?)
            }
        })
    }

    /// The S3 client's options, and the deadlines of its calls (taken out of the URL's query).
    fn s3_options(&self) -> Result<Option<(BTreeMap<String, String>, crate::s3::Deadlines)>> {
        let RepoUrl::S3 {
            bucket,
            prefix,
            options,
        } = &self.url
        else {
            return Ok(None);
        };
        crate::s3::client_options(bucket, prefix, options, self.s3_keys.as_ref())
            .map(Some)
            .map_err(|e| e.context(format!("repository {}", self.name)))
    }

    fn backends(&self) -> Result<(rustic_core::RepositoryBackends, Arc<dyn ObjectStore>)> {
        let objects = self.objects()?;
        let b = match &self.url {
            RepoUrl::Local(p) => BackendOptions::default()
                .repository(format!("local:{p}"))
                .to_backends()
                .map_err(|e| rustic(e, &format!("opening repository {}", self.name)))?,
            // Lifeboat's own S3 backend: rustic_backend's has no deadline on a call.
            RepoUrl::S3 { .. } => {
                let (o, d) = self.s3_options()?.expect("s3");
                rustic_core::RepositoryBackends::new(
                    Arc::new(crate::s3::S3Backend::new(&o, d)?),
                    None,
                )
            }
        };
        Ok((b, objects))
    }

    fn credentials(&self) -> Credentials {
        Credentials::password(&self.password)
    }
}

/// An open repository.
pub struct Store {
    pub spec: RepoSpec,
    /// rustic_core's index states consume the handle; it is put back after each use.
    repo: Mutex<Option<Repository<OpenStatus>>>,
    objects: Arc<dyn ObjectStore>,
    key: RepoKey,
}

#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub short_id: String,
    pub time: String,
    pub timestamp: i64,
    pub hostname: String,
    pub label: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub plan: Option<String>,
    pub job: Option<String>,
    pub service: Option<String>,
    pub kind: Option<String>,
    pub files: u64,
    pub bytes: u64,
    pub bytes_added: u64,
}

fn tag_value(tags: &[String], key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    tags.iter()
        .find_map(|t| t.strip_prefix(&prefix).map(str::to_string))
}

impl SnapshotInfo {
    /// The value of a `key=value` tag.
    pub fn tag(&self, key: &str) -> Option<String> {
        tag_value(&self.tags, key)
    }

    fn from(s: &SnapshotFile) -> Self {
        let tags: Vec<String> = s.tags.iter().cloned().collect();
        let id = s.id.to_hex().to_string();
        let (files, bytes, bytes_added) = s
            .summary
            .as_ref()
            .map(|m| {
                (
                    m.total_files_processed,
                    m.total_bytes_processed,
                    m.data_added_packed,
                )
            })
            .unwrap_or_default();
        Self {
            short_id: id[..8].to_string(),
            id,
            time: s.time.timestamp().to_string(),
            timestamp: s.time.timestamp().as_second(),
            hostname: s.hostname.clone(),
            label: s.label.clone(),
            paths: s.paths.iter().cloned().collect(),
            plan: tag_value(&tags, "plan"),
            job: tag_value(&tags, "job"),
            service: tag_value(&tags, "service"),
            kind: tag_value(&tags, "kind"),
            tags,
            files,
            bytes,
            bytes_added,
        }
    }
}

/// What a backup did.
#[derive(Clone, Debug, Serialize)]
pub struct BackupSummary {
    pub snapshot: String,
    pub files: u64,
    pub dirs: u64,
    pub bytes_read: u64,
    pub bytes_added: u64,
    pub bytes_added_packed: u64,
    /// Files taken from the previous snapshot without being read (same size, times, inode).
    pub files_unchanged: u64,
    /// Files that changed while they were read: stored as read, so a later backup takes them
    /// again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_while_read: Vec<String>,
    /// Files listed but gone when they were to be read: not in the snapshot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vanished: Vec<String>,
    /// How the source was read, when there is a choice (a base backup: the data directory on
    /// this host, or streamed with `pg_basebackup` and why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// Labels Lifeboat puts on every snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotTags {
    pub plan: String,
    pub job: String,
    pub service: String,
    pub kind: String,
    /// More `key=value` tags (a base backup's LSNs and timeline). Values hold no commas.
    pub extra: Vec<(String, String)>,
}

impl SnapshotTags {
    fn to_options(&self) -> Result<SnapshotOptions> {
        let mut tags = format!(
            "plan={},job={},service={},kind={}",
            self.plan, self.job, self.service, self.kind
        );
        for (k, v) in &self.extra {
            tags.push_str(&format!(",{k}={}", v.replace(',', ";")));
        }
        SnapshotOptions::default()
            .label(self.job.clone())
            .add_tags(&tags)
            .map_err(|e| rustic(e, "tagging the snapshot"))
    }

    /// A new snapshot (time, host, user) carrying these tags.
    fn to_snapshot(&self) -> Result<SnapshotFile> {
        self.to_options()?
            .to_snapshot()
            .map_err(|e| rustic(e, "creating snapshot"))
    }
}

fn summary(s: &SnapshotFile) -> BackupSummary {
    let m = s.summary.clone().unwrap_or_default();
    BackupSummary {
        snapshot: s.id.to_hex().to_string(),
        files: m.total_files_processed,
        dirs: m.total_dirs_processed,
        bytes_read: m.total_bytes_processed,
        bytes_added: m.data_added,
        bytes_added_packed: m.data_added_packed,
        files_unchanged: m.files_unmodified,
        changed_while_read: Vec::new(),
        via: None,
        vanished: Vec::new(),
    }
}

/// A damaged snapshot, as verification names it.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub damaged_packs: Vec<String>,
    /// Snapshots that reference data in a damaged pack (id, job).
    pub damaged_snapshots: Vec<(String, Option<String>)>,
}

impl Store {
    fn progress() -> Bars {
        Bars::auto()
    }

    fn new_repo(spec: &RepoSpec) -> Result<(Repository<()>, Arc<dyn ObjectStore>)> {
        let (backends, objects) = spec.backends()?;
        let opts = match &spec.cache_dir {
            Some(dir) => RepositoryOptions::default().cache_dir(dir.clone()),
            None => RepositoryOptions::default().no_cache(true),
        };
        let repo = Repository::new_with_progress(&opts, &backends, Self::progress())
            .map_err(|e| rustic(e, &format!("opening repository {}", spec.name)))?;
        Ok((repo, objects))
    }

    fn from_open(
        spec: &RepoSpec,
        repo: Repository<OpenStatus>,
        objects: Arc<dyn ObjectStore>,
    ) -> Result<Store> {
        let key = RepoKey::from_master(&repo.key())?;
        Ok(Store {
            spec: spec.clone(),
            repo: Mutex::new(Some(repo)),
            objects,
            key,
        })
    }

    /// Connect to the backend and learn whether a repository is there.
    fn connect(spec: &RepoSpec) -> Result<(Repository<()>, Arc<dyn ObjectStore>, bool)> {
        let (repo, objects) = Self::new_repo(spec)?;
        let exists = repo
            .config_id()
            .map_err(|e| backend_err(spec, e))?
            .is_some();
        Ok((repo, objects, exists))
    }

    /// Create a new repository. Refuses to touch an existing one.
    pub fn init(spec: &RepoSpec) -> Result<Store> {
        let (repo, objects, exists) = Self::connect(spec)?;
        if exists {
            return Err(Error::new(
                Kind::Input,
                format!(
                    "repository {} at {} already exists",
                    spec.name, spec.display
                ),
            )
            .hint("nothing to do; `lifeboat snapshots` lists what it holds"));
        }
        let mut config = ConfigOptions::default().set_version(2u32);
        if let Some(level) = spec.compression {
            config = config.set_compression(level);
        }
        let repo = repo
            .init(&spec.credentials(), &KeyOptions::default(), &config)
            .map_err(|e| rustic(e, &format!("initialising repository {}", spec.name)))?;
        // restic's scrypt parameters: a quarter of the memory at every open.
        crate::keyfile::use_restic_params(&*objects, &spec.password)
            .map_err(|e| e.context(format!("writing the key of repository {}", spec.name)))?;
        Self::from_open(spec, repo, objects)
    }

    /// Open an existing repository with its key.
    pub fn open(spec: &RepoSpec) -> Result<Store> {
        let (repo, objects, exists) = Self::connect(spec)?;
        if !exists {
            return Err(Error::new(
                Kind::NotARepository,
                format!(
                    "no repository at {} (repository {})",
                    spec.display, spec.name
                ),
            )
            .hint(format!("create it with `lifeboat repo init {}`", spec.name)));
        }
        let repo = repo.open(&spec.credentials()).map_err(|e| {
            if e.is_incorrect_password() {
                Error::new(
                    Kind::Key,
                    format!(
                        "wrong key for repository {} at {}: no key in the repository matches it",
                        spec.name, spec.display
                    ),
                )
                .hint("check key_file / key_env / key_command of this repository in the plan")
            } else {
                rustic(e, &format!("opening repository {}", spec.name))
            }
        })?;
        Self::from_open(spec, repo, objects)
    }

    pub fn lock(&self, exclusive: bool, command: &str, job: Option<&str>) -> Result<LockGuard> {
        lock::acquire(self.objects.clone(), &self.key, exclusive, command, job)
            .map_err(|e| e.context(format!("repository {}", self.spec.name)))
    }

    /// The repository's master key (for deriving keys of Lifeboat's own objects).
    pub fn key(&self) -> &RepoKey {
        &self.key
    }

    /// The WAL archive of a service, beside this repository's data.
    pub fn wal_archive(&self, service: &str) -> crate::walarchive::WalArchive {
        crate::walarchive::WalArchive::new(
            self.objects.clone(),
            service,
            crate::walarchive::wal_key(&self.key),
        )
    }

    pub fn locks(&self) -> Result<Vec<FoundLock>> {
        lock::list_locks(&*self.objects, &self.key)
    }

    pub fn unlock(&self, all: bool) -> Result<Vec<FoundLock>> {
        lock::unlock(&*self.objects, &self.key, all)
    }

    fn all_snapshot_files(&self) -> Result<Vec<SnapshotFile>> {
        let mut s = self.with_open(|r| {
            r.get_all_snapshots()
                .map_err(|e| rustic(e, &format!("listing snapshots of {}", self.spec.name)))
        })?;
        s.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(s)
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        Ok(self
            .all_snapshot_files()?
            .iter()
            .map(SnapshotInfo::from)
            .collect())
    }

    /// Back up local paths. Every path must exist: a missing one fails before anything is written.
    /// Files unchanged since the latest snapshot of the same job, host and paths are not read
    /// again, unless `full`.
    pub fn backup_paths(
        &self,
        paths: &[PathBuf],
        excludes: &[String],
        tags: &SnapshotTags,
        full: bool,
    ) -> Result<BackupSummary> {
        for p in paths {
            if let Err(e) = std::fs::symlink_metadata(p) {
                return Err(Error::new(
                    Kind::Source,
                    format!("backup path {} cannot be read: {e}", p.display()),
                )
                .hint("fix the service's `paths` in the plan, or create the path"));
            }
        }
        let list = paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        let source = PathList::from_iter(list.iter().map(PathBuf::from))
            .sanitize()
            .map_err(|e| Error::new(Kind::Input, format!("bad backup path: {e}")))?;
        let mut ex = rustic_core::Excludes::default();
        ex.globs = excludes.iter().map(|g| format!("!{g}")).collect();
        self.backup_local(&source, &ex, None, !full, tags)
    }

    /// Back up a directory's contents as the snapshot path `as_path` (a staged base backup as
    /// `/pgdata`). Every file is read (no parent shortcut): staged files are new every time, and
    /// deduplication still stores only changed chunks.
    pub fn backup_dir_as(
        &self,
        dir: &Path,
        as_path: &str,
        tags: &SnapshotTags,
    ) -> Result<BackupSummary> {
        let source = PathList::from_iter([dir.to_path_buf()])
            .sanitize()
            .map_err(|e| Error::new(Kind::Input, format!("bad backup path: {e}")))?;
        self.backup_local(
            &source,
            &rustic_core::Excludes::default(),
            Some(PathBuf::from(as_path)),
            false,
            tags,
        )
    }

    /// Whether backups into this repository go through Lifeboat's pipeline (a version 2
    /// repository); a version 1 repository is written by rustic_core's archiver.
    pub fn has_pipeline(&self) -> Result<bool> {
        Ok(self.pipeline_level()?.is_some())
    }

    /// Back up a directory read in place (a live data directory), as the snapshot path
    /// `as_path`. Files unchanged since `parent` (same size, times and inode, and last modified
    /// before `unchanged_before`) are taken from it without being read; files `fixed_chunks`
    /// names are cut in fixed-size chunks. `tags_at_end` adds tags once everything is stored
    /// (facts only known then). Needs a version 2 repository ([`Store::has_pipeline`]).
    #[allow(clippy::too_many_arguments)]
    pub fn backup_tree(
        &self,
        source: &crate::tree_source::TreeSource,
        as_path: &str,
        tags: &SnapshotTags,
        parent: Option<&str>,
        unchanged_before: Option<jiff::Timestamp>,
        fixed_chunks: Option<fn(&Path) -> bool>,
        tags_at_end: impl FnOnce() -> Result<Vec<(String, String)>>,
    ) -> Result<BackupSummary> {
        let Some(level) = self.pipeline_level()? else {
            return Err(Error::new(
                Kind::Input,
                format!(
                    "repository {} is a version 1 repository: reading a directory in place needs version 2",
                    self.spec.name
                ),
            ));
        };
        let snap = tags.to_snapshot()?;
        let parent = match parent {
            Some(id) => self
                .all_snapshot_files()?
                .into_iter()
                .find(|s| s.id.to_hex().starts_with(id)),
            None => None,
        };
        let opts = crate::backup::Options {
            as_path: Some(PathBuf::from(as_path)),
            parent,
            level,
            restat: true,
            fixed_chunks,
            unchanged_before,
        };
        let paths = [source.root().to_path_buf()];
        use rustic_core::{ProgressBars, ProgressType};
        let progress = Self::progress().progress(ProgressType::Bytes, "backing up...");
        let out = crate::backup::archive_with(
            self.objects.clone(),
            &self.key,
            source,
            &paths,
            snap,
            &opts,
            &progress,
            |snap| {
                for (k, v) in tags_at_end()? {
                    snap.tags.add(format!("{k}={}", v.replace(',', ";")));
                }
                Ok(())
            },
        );
        progress.finish();
        // The trailer's own error says more than the listing error the walk saw.
        let out = match (out, source.take_error()) {
            (_, Some(e)) => return Err(e),
            (r, None) => r.map_err(|e| e.context(format!("backup to {}", self.spec.name)))?,
        };
        let mut s = summary(&out.snapshot);
        s.changed_while_read = out.changed_while_read;
        s.vanished = out.vanished;
        Ok(s)
    }

    /// The latest snapshot of the same job, host and paths: files unchanged since it are not
    /// read again.
    fn parent_for(&self, snap: &SnapshotFile, paths: &[String]) -> Result<Option<SnapshotFile>> {
        let mut want: Vec<&str> = paths.iter().map(String::as_str).collect();
        want.sort_unstable();
        Ok(self.all_snapshot_files()?.into_iter().rev().find(|s| {
            let mut have: Vec<&str> = s.paths.iter().map(String::as_str).collect();
            have.sort_unstable();
            s.hostname == snap.hostname && s.label == snap.label && have == want
        }))
    }

    /// The repository's zstd level for Lifeboat's pipeline; `None` for a version 1 repository
    /// (no compression), which rustic_core's archiver writes instead.
    fn pipeline_level(&self) -> Result<Option<i32>> {
        self.with_open(|r| {
            r.config()
                .zstd()
                .map_err(|e| rustic(e, &format!("reading the config of {}", self.spec.name)))
        })
    }

    /// One backup of local paths: Lifeboat's pipeline on a version 2 repository, rustic_core's
    /// archiver on a version 1 one.
    fn backup_local(
        &self,
        source: &PathList,
        excludes: &rustic_core::Excludes,
        as_path: Option<PathBuf>,
        with_parent: bool,
        tags: &SnapshotTags,
    ) -> Result<BackupSummary> {
        let snap = tags.to_snapshot()?;
        let Some(level) = self.pipeline_level()? else {
            let mut opts = BackupOptions::default().excludes(excludes.clone());
            if let Some(p) = &as_path {
                opts = opts.as_path(p.clone());
            }
            opts.parent_opts = opts.parent_opts.force(!with_parent);
            let snap = self.with_ids(|repo| {
                repo.backup(&opts, source, snap)
                    .map_err(|e| rustic(e, &format!("backup to {}", self.spec.name)))
            })?;
            return Ok(summary(&snap));
        };
        let paths = source.paths();
        let local = rustic_core::LocalSource::new(
            rustic_core::LocalSourceSaveOptions::default(),
            excludes,
            &rustic_core::LocalSourceFilterOptions::default(),
            &paths,
        )
        .map_err(|e| rustic(e, "reading the backup paths"))?;
        let names: Vec<String> = match &as_path {
            Some(p) => vec![p.to_string_lossy().into_owned()],
            None => paths
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
        };
        let parent = if with_parent {
            self.parent_for(&snap, &names)?
        } else {
            None
        };
        let opts = crate::backup::Options {
            as_path,
            parent,
            level,
            restat: true,
            ..Default::default()
        };
        self.run_pipeline(&local, &paths, snap, &opts)
    }

    fn run_pipeline<R: rustic_core::ReadSource>(
        &self,
        source: &R,
        paths: &[PathBuf],
        snap: SnapshotFile,
        opts: &crate::backup::Options,
    ) -> Result<BackupSummary>
    where
        <R::Open as rustic_core::ReadSourceOpen>::Reader: 'static,
    {
        use rustic_core::{ProgressBars, ProgressType};
        let progress = Self::progress().progress(ProgressType::Bytes, "backing up...");
        let out = crate::backup::archive(
            self.objects.clone(),
            &self.key,
            source,
            paths,
            snap,
            opts,
            &progress,
        )
        .map_err(|e| e.context(format!("backup to {}", self.spec.name)))?;
        progress.finish();
        let mut s = summary(&out.snapshot);
        s.changed_while_read = out.changed_while_read;
        s.vanished = out.vanished;
        Ok(s)
    }

    /// Back up one file's content under `name` (a command's spooled output).
    pub fn backup_file_as(
        &self,
        file: &Path,
        name: &str,
        tags: &SnapshotTags,
    ) -> Result<BackupSummary> {
        let src = crate::spool::SpoolSource::new(file, PathBuf::from(name))?;
        let snap = tags.to_snapshot()?;
        let Some(level) = self.pipeline_level()? else {
            let snap = self.with_ids(|repo| {
                repo.archive(
                    &BackupOptions::default(),
                    &src,
                    snap,
                    &[PathBuf::from(name)],
                )
                .map_err(|e| rustic(e, &format!("backup to {}", self.spec.name)))
            })?;
            return Ok(summary(&snap));
        };
        let opts = crate::backup::Options {
            level,
            restat: false,
            ..Default::default()
        };
        self.run_pipeline(&src, &[PathBuf::from(name)], snap, &opts)
    }

    fn take(&self) -> Result<Repository<OpenStatus>> {
        self.repo.lock().expect("repo lock").take().ok_or_else(|| {
            Error::new(
                Kind::Internal,
                format!(
                    "repository {} handle lost after an earlier error",
                    self.spec.name
                ),
            )
        })
    }

    fn put(&self, repo: Repository<OpenStatus>) {
        *self.repo.lock().expect("repo lock") = Some(repo);
    }

    /// Run `f` on the open repository.
    fn with_open<T>(&self, f: impl FnOnce(&Repository<OpenStatus>) -> Result<T>) -> Result<T> {
        let guard = self.repo.lock().expect("repo lock");
        let repo = guard.as_ref().ok_or_else(|| {
            Error::new(
                Kind::Internal,
                "repository handle lost after an earlier error",
            )
        })?;
        f(repo)
    }

    /// Load an index into the repository handle, run `f`, and put the handle back.
    fn with_index<S: rustic_core::IndexedTree, T>(
        &self,
        load: impl FnOnce(Repository<OpenStatus>) -> rustic_core::RusticResult<Repository<S>>,
        f: impl FnOnce(&Repository<S>) -> Result<T>,
    ) -> Result<T> {
        let repo = load(self.take()?)
            .map_err(|e| rustic(e, &format!("reading the index of {}", self.spec.name)))?;
        let out = f(&repo);
        self.put(repo.drop_index());
        out
    }

    /// Run `f` with the index of blob ids loaded (enough for writing).
    fn with_ids<T>(
        &self,
        f: impl FnOnce(&Repository<rustic_core::IndexedIdsStatus>) -> Result<T>,
    ) -> Result<T> {
        self.with_index(Repository::to_indexed_ids, f)
    }

    /// Run `f` with the full index loaded (for reading data).
    fn with_full<T>(
        &self,
        f: impl FnOnce(&Repository<rustic_core::IndexedFullStatus>) -> Result<T>,
    ) -> Result<T> {
        self.with_index(Repository::to_indexed, f)
    }

    /// Find one snapshot by id prefix or `latest` (optionally only a job's).
    pub fn find_snapshot(&self, id: &str, job: Option<&str>) -> Result<SnapshotInfo> {
        let snaps = self.snapshots()?;
        let candidates: Vec<&SnapshotInfo> = snaps
            .iter()
            .filter(|s| job.is_none() || s.job.as_deref() == job)
            .collect();
        let found: Vec<&SnapshotInfo> = if id == "latest" {
            candidates.last().copied().into_iter().collect()
        } else {
            candidates
                .into_iter()
                .filter(|s| s.id.starts_with(id))
                .collect()
        };
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::new(
                Kind::Input,
                format!("no snapshot `{id}` in repository {}", self.spec.name),
            )
            .hint("`lifeboat snapshots` lists them")),
            many => Err(Error::new(
                Kind::Input,
                format!("snapshot id `{id}` is ambiguous ({} matches)", many.len()),
            )
            .hint("give more characters of the id")),
        }
    }

    /// Restore a snapshot into `target` with permissions and times. Data is checked as it is
    /// read (MAC and hash); a damaged blob fails the restore.
    /// `path` restores only that file or directory of the snapshot (as it was backed up,
    /// e.g. `/etc/app/app.conf`).
    pub fn restore(
        &self,
        snapshot_id: &str,
        path: Option<&str>,
        target: &Path,
    ) -> Result<RestoreSummary> {
        let spec = match path {
            Some(p) => format!("{snapshot_id}:{}", p.trim_end_matches('/')),
            None => snapshot_id.to_string(),
        };
        self.with_full(|repo| Self::restore_in(repo, &spec, target))
    }

    fn restore_in(
        repo: &Repository<rustic_core::IndexedFullStatus>,
        snapshot_id: &str,
        target: &Path,
    ) -> Result<RestoreSummary> {
        let node = repo
            .node_from_snapshot_path(snapshot_id, |_| true)
            .map_err(|e| {
                let what = match snapshot_id.split_once(':') {
                    Some((id, path)) => {
                        format!("finding {path} in snapshot {}", &id[..8.min(id.len())])
                    }
                    None => format!("finding snapshot {snapshot_id}"),
                };
                let mut err = rustic(e, &what);
                err.kind = Kind::Input;
                err.hint("`lifeboat snapshots` lists snapshots and the paths they hold")
            })?;
        let progress = repo.progress_bytes("restoring...");
        crate::restore::restore_tree(repo, &node, target, progress).map_err(|e| {
            e.context(format!(
                "restoring snapshot {}",
                &snapshot_id[..8.min(snapshot_id.len())]
            ))
        })
    }

    /// Delete snapshots (by full id). Data is freed by [`Store::prune`].
    pub fn delete_snapshots(&self, ids: &[String]) -> Result<()> {
        let files = self.all_snapshot_files()?;
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let ids: Vec<_> = files
            .iter()
            .filter(|s| wanted.contains(s.id.to_hex().as_str()))
            .map(|s| s.id)
            .collect();
        self.with_open(|r| {
            r.delete_snapshots(&ids)
                .map_err(|e| rustic(e, "deleting snapshots"))
        })
    }

    /// Remove data no snapshot references. Returns (packs removed, bytes freed).
    pub fn prune(&self) -> Result<(u64, u64)> {
        // Callers hold an exclusive lock, so unused packs can go at once instead of rustic's
        // default two-phase delete (mark now, delete a day later).
        let opts = PruneOptions::default().instant_delete(true);
        self.with_open(|r| {
            let plan = r
                .prune_plan(&opts)
                .map_err(|e| rustic(e, "planning prune"))?;
            let st = &plan.stats;
            let sizes = st.size_sum();
            // Unused packs go, partly used ones are repacked (their unused part freed), packs
            // marked by an earlier two-phase prune are deleted, and so are packs no index
            // names (left by a killed backup: they were counted nowhere, so a prune that freed
            // them reported 0).
            let packs =
                st.packs.unused + st.packs.repack + st.packs_to_delete.remove + st.packs_unref;
            let bytes = sizes.remove + sizes.repackrm + st.size_to_delete.remove + st.size_unref;
            r.prune(&opts, plan).map_err(|e| rustic(e, "pruning"))?;
            Ok((packs, bytes))
        })
    }

    /// Copy snapshots (by full id) to `dest`, skipping those already there; only blobs the
    /// destination lacks are uploaded.
    pub fn copy_to(&self, dest: &Store, ids: &[String]) -> Result<CopySummary> {
        let files = self.all_snapshot_files()?;
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let selected: Vec<SnapshotFile> = files
            .into_iter()
            .filter(|s| wanted.contains(s.id.to_hex().as_str()))
            .collect();
        let relevant = dest.with_open(|d| {
            d.relevant_copy_snapshots(|_| true, &selected)
                .map_err(|e| rustic(e, "comparing snapshots with the copy target"))
        })?;
        let todo: Vec<SnapshotFile> = relevant
            .iter()
            .filter(|c| c.relevant)
            .map(|c| c.sn.clone())
            .collect();
        let before = dest.repo_size()?;
        self.with_full(|src| {
            dest.with_ids(|d| {
                src.copy(d, todo.iter())
                    .map_err(|e| rustic(e, &format!("copying to {}", dest.spec.name)))
            })
        })?;
        let after = dest.repo_size()?;
        Ok(CopySummary {
            copied: todo.len(),
            already_there: selected.len() - todo.len(),
            bytes_uploaded: after.saturating_sub(before),
        })
    }

    fn repo_size(&self) -> Result<u64> {
        let infos = self.with_open(|r| {
            r.infos_files()
                .map_err(|e| rustic(e, "measuring the repository"))
        })?;
        Ok(infos.repo.iter().map(|i| i.size).sum())
    }

    /// Check structure, and with `read_data` the data itself (`subset`: e.g. "10%", "1/5").
    pub fn check(&self, read_data: bool, subset: Option<&str>) -> Result<CheckReport> {
        let mut opts = CheckOptions::default().read_data(read_data);
        if let Some(s) = subset {
            let sub: ReadSubsetOption = s
                .parse()
                .map_err(|e| Error::new(Kind::Input, format!("bad read-data subset `{s}`: {e}")))?;
            opts = opts.read_data_subset(sub);
        }
        let results = self.with_open(|r| {
            r.check(opts)
                .map_err(|e| rustic(e, "checking the repository"))
        })?;
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut damaged = BTreeSet::new();
        for (level, err) in &results.0 {
            let text = crate::error::reword(&compact(&format!("{err}")));
            if format!("{level:?}") == "Error" {
                // "error reading/checking pack d7ce4efa : …": the (short) id of the damaged pack
                if let Some(rest) = text.split("pack ").nth(1) {
                    let id: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
                    if id.len() >= 8 {
                        damaged.insert(id);
                    }
                }
                errors.push(text);
            } else {
                warnings.push(text);
            }
        }
        let damaged_snapshots = if damaged.is_empty() && errors.is_empty() {
            Vec::new()
        } else {
            self.snapshots_using_packs(&damaged)?
        };
        Ok(CheckReport {
            errors,
            warnings,
            damaged_packs: damaged.into_iter().collect(),
            damaged_snapshots,
        })
    }

    /// Which snapshots reference a blob stored in one of `packs` (or whose trees are unreadable).
    fn snapshots_using_packs(
        &self,
        packs: &BTreeSet<String>,
    ) -> Result<Vec<(String, Option<String>)>> {
        let snaps = self.all_snapshot_files()?;
        self.with_full(|repo| {
            let mut out = Vec::new();
            for snap in &snaps {
                let info = SnapshotInfo::from(snap);
                if snapshot_touches(repo, snap.tree, packs) {
                    out.push((info.id, info.job));
                }
            }
            Ok(out)
        })
    }
}

fn snapshot_touches<S: IndexedFull>(
    repo: &Repository<S>,
    root: rustic_core::TreeId,
    packs: &BTreeSet<String>,
) -> bool {
    let mut stack = vec![root];
    while let Some(tree_id) = stack.pop() {
        match repo.get_index_entry(&tree_id) {
            Ok(e) if in_packs(packs, &e.pack.to_hex()) => return true,
            Err(_) => return true,
            _ => {}
        }
        let Ok(tree) = repo.get_tree(&tree_id) else {
            return true;
        };
        for node in tree.nodes {
            if let Some(sub) = node.subtree {
                stack.push(sub);
            }
            for blob in node.content.iter().flatten() {
                match repo.get_index_entry(blob) {
                    Ok(e) if in_packs(packs, &e.pack.to_hex()) => return true,
                    Err(_) => return true,
                    _ => {}
                }
            }
        }
    }
    false
}

/// Whether a pack id matches one of `packs` (full ids or the short prefixes rustic reports).
fn in_packs(packs: &BTreeSet<String>, id: &str) -> bool {
    packs.iter().any(|p| id.starts_with(p.as_str()))
}

/// rustic's multi-paragraph report as one line, without the boilerplate.
fn compact(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && *l != "Message:"
                && !l.starts_with("For more information")
                && !l.starts_with("Related issues")
                && !l.starts_with("- http")
        })
        .map(|l| l.replace("`rustic_core` experienced an error related to ", ""))
        .collect::<Vec<_>>()
        .join(" ")
}

fn backend_err(spec: &RepoSpec, e: Box<rustic_core::RusticError>) -> Error {
    let p = crate::error::parse(e);
    let cause = p.cause();
    // A known cause (missing bucket, refused credentials) is named as such; anything else is
    // "cannot reach".
    let mut out = match p.hint {
        Some(hint) => Error::new(
            Kind::Backend,
            format!("repository {} at {}: {cause}", spec.name, spec.display),
        )
        .hint(hint),
        None => Error::new(
            Kind::Backend,
            format!(
                "cannot reach repository {} at {} (gave up after retries): {cause}",
                spec.name, spec.display
            ),
        )
        .hint("check that the storage is reachable (endpoint, network, credentials) and run again"),
    };
    out.root_cause = p.root;
    out
}

pub use crate::restore::RestoreSummary;

#[derive(Clone, Debug, Serialize)]
pub struct CopySummary {
    pub copied: usize,
    pub already_there: usize,
    pub bytes_uploaded: u64,
}

/// Used by tests and `repo init`: is there a repository at all?
pub fn exists(spec: &RepoSpec) -> Result<bool> {
    Store::connect(spec).map(|(_, _, exists)| exists)
}
