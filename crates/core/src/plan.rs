//! The plan model: what `lifeboat.yaml` says, typed.
//!
//! Every struct denies unknown fields so a typo is an error, not a silently ignored setting.
//! The doc comments become the JSON Schema's descriptions (`lifeboat plan schema`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::units::{Duration, Size};

/// A disaster-recovery plan.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The plan's name; recorded on every snapshot and evidence event.
    pub name: String,
    /// Where Lifeboat keeps its own state (evidence log, caches). Relative paths are relative
    /// to the plan file. Default: `.lifeboat` beside the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// Recovery objectives by tier name.
    #[serde(default)]
    pub tiers: BTreeMap<String, Tier>,
    /// Places that can fail as a whole (regions, data centres).
    #[serde(default)]
    pub sites: Vec<String>,
    /// What to protect, by name.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Where backups live, by name.
    #[serde(default)]
    pub repositories: BTreeMap<String, Repository>,
    /// Backup jobs, by name.
    #[serde(default)]
    pub backups: BTreeMap<String, BackupJob>,
    /// Where to send notifications.
    #[serde(default)]
    pub notifications: Vec<Notification>,
    /// Who is told next while an incident stays unacknowledged (on-call, then team lead …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
    /// Ordered procedures (failover, switchover, failback, restoration), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runbooks: BTreeMap<String, Runbook>,
    /// Disaster drills: a scenario run against a service under a workload, measured against
    /// its objectives (`lifeboat drill run NAME`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drills: BTreeMap<String, Drill>,
    /// Maintenance the daemon runs on a schedule: verifications (with restores), retention,
    /// cross-region copies, repository checks. Backup jobs and drills carry their own
    /// `schedule`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schedules: BTreeMap<String, Task>,
    /// How the daemon runs schedules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<SchedulerSpec>,
    /// Where the daemon serves `/metrics` (Prometheus / OpenMetrics text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,
    /// The daemon's HTTP API and dashboard (`/api/v1/`, `/`), for on-call engineers and
    /// automation: every `/api` route needs a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiSpec>,
    /// An etcd cluster that coordinates an agent on every PostgreSQL member (`lifeboat agent
    /// --member SITE`) instead of one daemon deciding: the primary's agent holds a leader key
    /// on a short lease and stops its server before the lease can run out when it cannot renew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<CoordinatorSpec>,
}

/// The etcd cluster the agents coordinate through.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSpec {
    /// etcd client addresses (`host:port`), one member per site.
    pub etcd: Vec<String>,
    /// Lifetime of the leader's lease: how long a lost primary's site keeps the leadership
    /// before another member may take it. Whole seconds, at least 2. Default 3s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// How often the leader renews its lease. Default 500ms: a renewal that etcd cannot answer
    /// while it elects a new leader of its own (about its election timeout) leaves time for
    /// the next ones before the leader must stop (ttl minus margin after the last one sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew: Option<Duration>,
    /// How long before its lease could expire a leader that could not renew stops its server,
    /// counted from when it sent its last acknowledged renewal. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<Duration>,
    /// What an agent does with its member once another member leads and takes writes: `auto`
    /// (default) makes it that leader's standby — a stopped old primary rewound with
    /// `pg_rewind` (its discarded transactions in a divergence report), a standby following
    /// another server re-pointed — and leaves it stopped, saying why, where a rewind is
    /// impossible; `clone` then also clones it again with `pg_basebackup` (the old directory
    /// kept beside it, as `lifeboat rejoin` does); `manual` leaves it for `lifeboat rejoin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoin: Option<RejoinMode>,
    /// Fail-safe mode (off without it): when etcd cannot be reached, the leader keeps its
    /// server writable only while the agent of *every* other member of the service answers
    /// its call and promises not to campaign for a lease's time (Patroni's `failsafe_mode`;
    /// not a quorum: one member not answering and the leader stops as without fail-safe).
    /// Without it, a leader that cannot renew stops its server before its lease can run out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe: Option<FailsafeSpec>,
    /// A hardware or kernel watchdog (e.g. the `softdog` module's `/dev/watchdog`) as the
    /// backstop of the leader's own fencing: `off` (default), `auto` (used when the device can
    /// be opened), `required` (an agent that cannot use it does not start). While its member
    /// leads, the agent keeps the device fed only as long as a reset would still come before
    /// the lease could run out; so a leader whose agent is frozen or killed has its machine
    /// reset in time. Killing a leader's agent therefore resets its machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<WatchdogMode>,
    /// The watchdog device. Default `/dev/watchdog`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog_device: Option<String>,
}

/// See [`CoordinatorSpec::watchdog`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WatchdogMode {
    #[default]
    Off,
    Auto,
    Required,
}

/// See [`CoordinatorSpec::failsafe`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailsafeSpec {
    /// site → the address its agent listens on for the leader's calls (`host:port`), one for
    /// every site with a member.
    pub listen: std::collections::BTreeMap<String, String>,
    /// A file (relative to the plan) holding a secret every agent shares, at least 16 bytes:
    /// each call and answer carries an HMAC-SHA256 made with it, so nobody else can answer
    /// for a member.
    pub key_file: String,
}

/// See [`CoordinatorSpec::rejoin`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RejoinMode {
    #[default]
    Auto,
    Clone,
    Manual,
}

impl CoordinatorSpec {
    pub fn ttl(&self) -> std::time::Duration {
        self.ttl.map_or(std::time::Duration::from_secs(3), |d| d.0)
    }
    pub fn renew(&self) -> std::time::Duration {
        self.renew
            .map_or(std::time::Duration::from_millis(500), |d| d.0)
    }
    pub fn margin(&self) -> std::time::Duration {
        self.margin
            .map_or(std::time::Duration::from_secs(1), |d| d.0)
    }
}

/// The daemon's HTTP API.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiSpec {
    /// TCP address to serve on, e.g. `127.0.0.1:8470`.
    pub listen: String,
    /// Who may call it. Each token has a name (the actor in the evidence log) and a role:
    /// `viewer` reads, `operator` also runs jobs, pauses schedules, fails over and switches
    /// over, `admin` may do everything.
    #[serde(default)]
    pub tokens: Vec<ApiToken>,
    /// Which unauthenticated endpoints the API's address also answers: any of `health`,
    /// `livez`, `readyz`, `metrics`. Default: all four.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<Vec<String>>,
    /// Largest request body accepted (default 64KiB); larger ones get 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<Size>,
    /// How long one request may take, its headers and body included (default 10s); a client
    /// that is slower is cut off, so slow clients cannot hold the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    /// Serve over TLS (rustls), optionally requiring client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ApiTls>,
}

/// The API's TLS: PEM files, relative paths relative to the plan.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiTls {
    /// The certificate chain, leaf first.
    pub cert: String,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Require a client certificate signed by one of these CAs (a bearer token is still
    /// needed on `/api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
}

/// One API token. Give exactly one of `sha256` (the hex SHA-256 of the token: the plan then
/// holds no secret; `lifeboat api token NAME` makes one) or `token` (`${VAR}` or
/// `file:PATH`; the daemon keeps only its hash).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

/// The roles an API token can have, weakest first.
pub const API_ROLES: &[&str] = &["viewer", "operator", "admin"];
/// The open endpoints the API's address can answer.
pub const API_OPEN: &[&str] = &["health", "livez", "readyz", "metrics"];

/// The daemon's metrics endpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// TCP address to serve `/metrics` on, e.g. `127.0.0.1:9187`.
    pub listen: String,
    /// How often the repositories and WAL archives are read for their metrics (each read
    /// lists a remote repository). Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_interval: Option<Duration>,
}

/// When something runs: a cron expression (`"0 2 * * *"`, `"@daily"`), or one with its time
/// zone and options.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum Schedule {
    Cron(String),
    Spec(ScheduleSpec),
}

/// A schedule with its options.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// `minute hour day-of-month month day-of-week` (names, ranges, steps, lists, `L` for the
    /// last, `SAT#1` for the first Saturday), or `@hourly`, `@daily`, `@weekly`, `@monthly`,
    /// `@yearly`.
    pub cron: String,
    /// The IANA time zone the expression is read in (`Europe/Berlin`). Default UTC. On the
    /// day clocks spring forward a time in the gap runs at the first minute after it; on the
    /// day they fall back a fixed time runs once, at its first occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Each run starts after a random delay of up to this long (spreads load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Duration>,
    /// A run missed while the daemon was down runs once when it starts. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<bool>,
}

impl Schedule {
    pub fn cron(&self) -> &str {
        match self {
            Schedule::Cron(c) => c,
            Schedule::Spec(s) => &s.cron,
        }
    }

    pub fn time_zone(&self) -> Option<&str> {
        match self {
            Schedule::Cron(_) => None,
            Schedule::Spec(s) => s.time_zone.as_deref(),
        }
    }

    pub fn jitter(&self) -> Option<std::time::Duration> {
        match self {
            Schedule::Cron(_) => None,
            Schedule::Spec(s) => s.jitter.map(|d| d.0),
        }
    }

    pub fn catch_up(&self) -> bool {
        match self {
            Schedule::Cron(_) => true,
            Schedule::Spec(s) => s.catch_up.unwrap_or(true),
        }
    }
}

/// What a `schedules` entry runs.
pub const TASKS: &[&str] = &["verify", "forget", "copy", "check"];

/// A maintenance task on a schedule.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// `verify` (`lifeboat verify`; with `restore: true`, a restore into a sandbox),
    /// `forget` (retention), `copy` (`repo copy --from --to`), `check` (`repo check`).
    pub run: String,
    pub schedule: Schedule,
    /// verify: only this backup job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// verify with `restore`: only this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// verify: prove postgres backups by restoring them into a sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<bool>,
    /// forget, check: only this repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// copy: from this repository (default: the only one) to `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// verify, check: read every blob back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_data: Option<bool>,
    /// verify, check: read a part back (`10%`, `1/5`, `500MiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_data_subset: Option<String>,
}

/// How the daemon runs schedules.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSpec {
    /// Scheduled runs at once (each a separate process; the failover checks never wait for
    /// them). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

/// The scenarios a drill can run.
pub const DRILL_SCENARIOS: &[&str] = &[
    "kill-primary",
    "hang-primary",
    "partition-site",
    "corrupt-data",
    "lose-region",
    "restore-only",
    "switchover",
];

/// Scenarios that take the primary away (they need a second member to fail over to).
pub const FAILOVER_SCENARIOS: &[&str] = &["kill-primary", "hang-primary", "partition-site"];

/// A disaster drill.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Drill {
    /// `kill-primary` (the primary's processes crash), `hang-primary` (they freeze: SIGSTOP),
    /// `partition-site` (the primary's site is cut off), `corrupt-data` (a table is dropped at a
    /// recorded instant, then restored to just before it), `lose-region` (the primary's site
    /// and its repository are gone), `restore-only` (a restore into a sandbox, timed: safe
    /// against production), `switchover` (planned: must lose nothing).
    pub scenario: String,
    /// The postgres service the drill runs against.
    pub service: String,
    /// switchover: the site to switch to. Default: the first other member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// restore-only: the repository to restore from (a cross-region copy). Default: the one
    /// the service archives into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// partition-site: `isolate` (default: nothing reaches the primary and it reaches no
    /// one), `one-way` (nothing reaches it; what it sends still leaves), or `coordinator`
    /// (every site cut off from the daemon's machine while the sites still reach each other;
    /// needs sites in network namespaces, as in a lab built by root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// partition-site `coordinator`: how long the partition lasts before it is healed.
    /// Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Duration>,
    /// The writers that measure the drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// What the drill must show. Default: the service tier's RPO and RTO, and no lost
    /// acknowledged write in a sync tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objectives: Option<Objectives>,
    /// Checks that must hold before the fault, during the drill and after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steady_state: Vec<SteadyCheck>,
    /// Limits that abort the drill (its faults are healed and the report says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrails: Option<Guardrails>,
    /// When the daemon runs the drill (cron or `@daily` …; with `--yes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// After a failover scenario, make the old primary a standby again (`lifeboat rejoin`) so
    /// the service is whole for the next drill. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoin: Option<bool>,
    /// Shell commands (`sh -c`) that always run at the end, whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teardown: Vec<String>,
}

/// The drill's writers: each opens a new connection per write (as a client after a failover
/// would) through the service's traffic endpoint, or to whichever member takes writes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Concurrent writers. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writers: Option<u32>,
    /// Pause between one writer's attempts. Default 20ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Writing before the fault. Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Duration>,
    /// Writing after the first write that succeeds after the fault. Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
    /// Deadline of one write, connection included. Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Database the drill's table lives in (`lifeboat_drill.writes`). Default: the member's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// How the writers reach the service: `endpoint` (the daemon's traffic endpoint), `dns`
    /// (the service's DNS name, asked of the daemon's responder and cached for its TTL, as a
    /// client does). `writers` per path. Default: the endpoint, and the DNS name too when the
    /// service has one and its members share a port (each site its own address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<Vec<String>>,
}

/// A drill's objectives.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Objectives {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto: Option<Duration>,
    /// Most acknowledged writes the drill may lose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_writes: Option<u64>,
}

/// A steady-state check: exactly one of `sql`, `http`, `command`, with its tolerance.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SteadyCheck {
    /// Shown in the report. Default: the check itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A query run on the primary (through the endpoint); its first column is compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// A URL to GET; passes on `status` (default any 2xx) and `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// A shell command that must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// sql: the exact value expected (e.g. `t`). Default: `t` unless `min`/`max` are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// sql: the value is a number at least `min` / at most `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `before`, `during`, `after` (default: before and after). During the drill the check
    /// runs every second.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<String>,
    /// How many runs during the drill may fail (a failover interrupts most checks). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
    /// Deadline of one run. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Limits that abort a drill.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Guardrails {
    /// Abort when no write has succeeded for this long after the fault. Default: the RTO
    /// objective plus 30s, at most 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_write_for: Option<Duration>,
    /// Abort a drill that runs longer than this. Default 30m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<Duration>,
}

/// An ordered procedure. Steps that name a `service` are grouped by service and run in the
/// services' `depends_on` order, independent services in parallel; a step without a service is
/// a barrier: everything before it finishes first, and it runs alone.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    /// `failover`, `switchover`, `failback`, `restoration` or `manual` (default). A `failover`
    /// runbook with a `service` also runs after `lifeboat serve` fails that service over
    /// automatically: its built-in fence/promote/switch-traffic steps are what the daemon just
    /// did, its other steps (hooks, notifications) run then. A `failback` runbook with a
    /// `service` is what `lifeboat failback SERVICE --to SITE` runs; its `rejoin` and
    /// `switchover` steps without a `site` take SITE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The service it is for (the default of its steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub steps: Vec<RunbookStep>,
}

/// One step: a built-in `action`, a `command`, or a `webhook`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunbookStep {
    /// Shown and recorded. Default: the action or command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `notify`, `fence`, `promote`, `switch-traffic`, `wait-healthy`, `restore`, `rejoin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// A shell command (`sh -c`), e.g. `aws route53 change-resource-record-sets …`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A URL to POST the step (JSON) to, e.g. a status page (usually `${STATUSPAGE_HOOK}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Secret>,
    /// The service the step acts on (default: the runbook's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The member (site) for fence, promote, switch-traffic, wait-healthy, rejoin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// notify: the message; severity P1..P4 (default P3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// restore: the backup job whose latest snapshot (or the postgres service's latest point)
    /// is restored, and where; `port` starts a restored PostgreSQL there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Deadline of one attempt. Default 60s (wait-healthy: 120s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Attempts after a failed one. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// `stop` (default) or `continue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// A person must approve before the step runs (typed `yes`; `--yes` approves all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<bool>,
}

/// The built-in runbook actions.
pub const RUNBOOK_ACTIONS: &[&str] = &[
    "notify",
    "fence",
    "promote",
    "switch-traffic",
    "wait-healthy",
    "restore",
    "rejoin",
    "switchover",
];

/// Recovery objectives.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Recovery point objective: the most data (as time) the tier may lose.
    pub rpo: Duration,
    /// Recovery time objective: how long the tier may be down.
    pub rto: Duration,
    /// Availability target in percent, e.g. 99.99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<f64>,
}

/// Something to protect.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Service {
    /// Files and directories.
    Paths {
        /// Tier (objectives) this service belongs to.
        tier: String,
        /// Site the paths live in (optional).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        site: Option<String>,
        /// Services that must be restored before this one.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        depends_on: Vec<String>,
        /// Absolute paths to back up.
        paths: Vec<String>,
        /// Patterns to exclude, gitignore style: without `/` (`*.tmp`, `cache`) they match a name
        /// anywhere; with `/` they are anchored, relative paths to the plan file (`data/cache/`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<String>,
    },
    /// A command whose standard output is the state to keep
    /// (`kubectl get all -A -o yaml`, `terraform state pull`).
    Command {
        /// Tier (objectives) this service belongs to.
        tier: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        site: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        depends_on: Vec<String>,
        /// Shell command (run with `sh -c`); its stdout is stored, a non-zero exit fails the backup.
        command: String,
        /// File name the output is stored under in the snapshot. Default: `<service>.out`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
        /// Kill the command and fail the backup after this long. Default: 1h.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<Duration>,
    },
    /// A PostgreSQL cluster with members per site (backups and failover arrive in later releases).
    Postgres {
        tier: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        depends_on: Vec<String>,
        /// Members by site name.
        #[serde(default)]
        members: BTreeMap<String, PgMember>,
        /// Directory with `pg_ctl`, `pg_basebackup` etc. Default: auto-detected.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bin_dir: Option<String>,
        /// Databases to dump logically (`pg_dump -Fc`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        databases: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replication: Option<Replication>,
        /// SQL checks run after a test restore (`lifeboat verify --restore`), each must return
        /// true, e.g. `SELECT count(*) > 0 FROM users`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        checks: Vec<String>,
        /// Automatic failover by `lifeboat serve` (needs members in two sites).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failover: Option<Box<FailoverSpec>>,
        /// Repository whose WAL archive holds this cluster's WAL (`lifeboat wal push`).
        /// Default: the repository of the service's base-backup job, or the only repository.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wal_repository: Option<String>,
        /// Stream WAL into the archive over the replication protocol while `lifeboat serve`
        /// runs (as `pg_receivewal --synchronous` does, from a replication slot on the
        /// primary): the archive trails the primary by about a second instead of a whole
        /// segment or `archive_timeout`. `archive_command` (`lifeboat wal push`) stays and
        /// confirms segments already streamed; it archives by itself whatever the stream
        /// missed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wal_stream: Option<WalStream>,
    },
    /// An application tier served from several sites (a load balancer or an app server per
    /// site). `lifeboat serve` checks each site's health URL and answers the service's DNS name
    /// with the first healthy site in `order` — or, with `follows`, with the site where the
    /// database's primary is, so clients never land on a site whose database no longer takes
    /// writes.
    Http {
        tier: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        depends_on: Vec<String>,
        /// Health check by site name: a URL (`http://10.0.1.5:8080/health`, passes on any 2xx),
        /// or `{ url, status, body, timeout }`.
        #[serde(default)]
        health: BTreeMap<String, SiteCheck>,
        /// The order sites are preferred in (primary, secondary …). Default: the plan's
        /// `sites` order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        order: Vec<String>,
        /// A postgres service (with `failover:`) whose routed primary's site this service
        /// answers with: the app moves with its database. While the app fails its checks
        /// there, the next healthy site in `order` whose database member is a healthy standby
        /// (never one whose member is down or a primary Lifeboat no longer routes to).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        follows: Option<String>,
        /// How often and how strictly the sites are checked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checks: Option<HttpChecks>,
        /// `auto` (default): back to a preferred site once it passes `healthy_threshold`
        /// checks. `manual`: stay on the site answering until `lifeboat failback SERVICE`
        /// (a failover away from an unhealthy site is always automatic).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failback: Option<Failback>,
        /// The name the built-in DNS responder answers for this service. Records default to
        /// the host of each site's health URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dns: Option<DnsSpec>,
        /// A runbook run whenever the answer changes (for DNS that lives elsewhere: a Route 53
        /// or other API call as a `command` or `webhook` step). Its steps see `LIFEBOAT_SITE`,
        /// `LIFEBOAT_RECORD`, `LIFEBOAT_FROM` (the previous site) and `LIFEBOAT_REASON`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_change: Option<String>,
    },
    /// An S3 bucket the application writes (uploads, media) kept replicated to a bucket in
    /// another region by `lifeboat serve`: new and changed objects copied with their metadata,
    /// deletions kept or propagated, a full comparison at start and every `reconcile`.
    Bucket {
        tier: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        depends_on: Vec<String>,
        /// The bucket the application writes.
        source: BucketSpec,
        /// Where it is replicated (another region, another S3 server).
        replica: BucketSpec,
        /// `keep` (default): objects deleted at the source stay in the replica (a deletion by
        /// mistake can be restored from it); `propagate`: deleted there too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deletes: Option<Deletes>,
        /// How often the source is listed for new and changed objects. Default 10s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval: Option<Duration>,
        /// How often both sides are listed and compared in full (deletions, objects changed
        /// or removed in the replica). Default 1h; also at every start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reconcile: Option<Duration>,
        /// Objects copied at once. Default 8.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parallel: Option<u32>,
    },
}

/// One side of a replicated bucket.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketSpec {
    /// `s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION` (any S3-compatible server).
    pub url: String,
    /// The site it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// S3 access key id; default: `AWS_ACCESS_KEY_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<Secret>,
    /// S3 secret access key; default: `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
}

/// What a deletion at a bucket's source does to its replica.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Deletes {
    #[default]
    Keep,
    Propagate,
}

impl Deletes {
    /// As the plan writes it.
    pub fn name(&self) -> &'static str {
        match self {
            Deletes::Keep => "keep",
            Deletes::Propagate => "propagate",
        }
    }
}

impl Service {
    pub fn tier(&self) -> &str {
        match self {
            Service::Paths { tier, .. }
            | Service::Command { tier, .. }
            | Service::Postgres { tier, .. }
            | Service::Http { tier, .. }
            | Service::Bucket { tier, .. } => tier,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Service::Paths { .. } => "paths",
            Service::Command { .. } => "command",
            Service::Postgres { .. } => "postgres",
            Service::Http { .. } => "http",
            Service::Bucket { .. } => "bucket",
        }
    }
    pub fn depends_on(&self) -> &[String] {
        match self {
            Service::Paths { depends_on, .. }
            | Service::Command { depends_on, .. }
            | Service::Postgres { depends_on, .. }
            | Service::Http { depends_on, .. }
            | Service::Bucket { depends_on, .. } => depends_on,
        }
    }
    /// The snapshot kind a backup of this service produces.
    pub fn snapshot_kind(&self) -> &'static str {
        match self {
            Service::Paths { .. } => "files",
            Service::Command { .. } => "command",
            Service::Postgres { .. } => "base", // or "dump": see BackupJob::snapshot_kind
            Service::Http { .. } | Service::Bucket { .. } => "none",
        }
    }
}

/// One site's health check of an http service: the URL and what must come back.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteHealth {
    /// URL to GET (`http://` or `https://`).
    pub url: String,
    /// Status that passes. Default: any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Text the response body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Deadline of one check. Default: the service's `checks.timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

impl SiteHealth {
    /// As one of the health checks the failover monitor runs.
    pub fn check(&self) -> HealthCheck {
        HealthCheck {
            http: Some(self.url.clone()),
            status: self.status,
            body: self.body.clone(),
            timeout: self.timeout,
            ..Default::default()
        }
    }

    /// The host of the URL (what the DNS name answers with by default).
    pub fn host(&self) -> Option<String> {
        let rest = self.url.split_once("://")?.1;
        let authority = rest.split(['/', '?', '#']).next()?;
        let host = authority.rsplit('@').next()?;
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next()?,
            None => host.split(':').next()?,
        };
        (!host.is_empty()).then(|| host.to_string())
    }
}

/// One site's health check: the URL alone (any 2xx passes), or `{ url, status, body, timeout }`.
#[derive(Clone, Debug, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum SiteCheck {
    Url(String),
    Check(SiteHealth),
}

impl SiteCheck {
    /// The check, whichever way it was written.
    pub fn spec(&self) -> SiteHealth {
        match self {
            SiteCheck::Url(u) => SiteHealth {
                url: u.clone(),
                ..Default::default()
            },
            SiteCheck::Check(h) => h.clone(),
        }
    }
}

// Read by hand rather than as an untagged enum, so that a mistake in the mapping is named
// (`unknown field `satus``) instead of "data did not match any variant".
impl<'de> Deserialize<'de> for SiteCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SiteCheck;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a health URL, or { url, status, body, timeout }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SiteCheck, E> {
                Ok(SiteCheck::Url(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<SiteCheck, A::Error> {
                SiteHealth::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(SiteCheck::Check)
            }
        }
        d.deserialize_any(V)
    }
}

/// How an http service's sites are checked. Defaults as fast as the database's: every 500ms,
/// 400ms per check, down after 3 failures in a row, healthy again after 2 passes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpChecks {
    /// Time between checks of a site. Default 500ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Deadline of one check (a URL that hangs fails when it passes). Default 400ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Failed checks in a row before a site is down. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Passed checks in a row before a site that was down is healthy again. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
}

impl HttpChecks {
    pub fn interval(&self) -> std::time::Duration {
        self.interval
            .map(|d| d.std())
            .unwrap_or(std::time::Duration::from_millis(500))
    }
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .map(|d| d.std())
            .unwrap_or(std::time::Duration::from_millis(400))
    }
    pub fn unhealthy_threshold(&self) -> u32 {
        self.unhealthy_threshold.unwrap_or(3).max(1)
    }
    pub fn healthy_threshold(&self) -> u32 {
        self.healthy_threshold.unwrap_or(2).max(1)
    }
}

/// Whether an http service goes back to a preferred site by itself.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    #[default]
    Auto,
    Manual,
}

/// Streaming WAL into the archive (see the service's `wal_stream`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WalStream {
    /// The physical replication slot on the primary (created if missing). Default:
    /// `lifeboat_<service>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// How often the segment being received is stored in the archive. Default 500ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

impl WalStream {
    /// The slot's name for service `service`.
    pub fn slot_for(&self, service: &str) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| format!("lifeboat_{}", crate::name_part(service)))
    }
}

/// One PostgreSQL member.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PgMember {
    /// Host name, IP address, or a Unix-socket directory (`/var/run/postgresql`).
    pub host: String,
    pub port: u16,
    /// Role to connect as (needs the REPLICATION attribute for base backups). Default: `postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password (`${PGPASSWORD}`, `file:/path`); none for trust/peer authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Data directory on this host (for restores and rejoin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// Database to connect to for checks. Default: `postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbname: Option<String>,
    /// Network namespace (Linux, `/run/netns/NAME`) the member's server runs in when Lifeboat
    /// starts it on this host — how a lab gives each site its own network. Starting it needs
    /// root (Lifeboat takes root back for the start only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

/// How `lifeboat serve` watches a postgres service and fails it over.
///
/// Defaults (500ms / 400ms / 3 / 2, refused connections re-checked every 100ms) confirm a
/// crashed primary (connection refused) in about 0.2 s and a hung one (timeouts) in about 1.5 s:
/// each check is bounded by 400 ms, so a hung server costs no more than a dead one; a stall
/// shorter than the timeout window never triggers a failover, and a recovering member must pass
/// two checks in a row before it counts as healthy again.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverSpec {
    /// Fail over automatically (default true); false: only decide and report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<bool>,
    /// Address of the traffic endpoint (a TCP proxy to the primary), e.g. `127.0.0.1:6432`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Time between health checks. Default 500ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Deadline of one check, connection included. Default 400ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Failed checks in a row before a member is down. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Passed checks in a row before a member is healthy again. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Time between checks of a member whose last connection was refused (nothing listens on
    /// its port: the server is down, not slow). Default 100ms, so a crashed primary is
    /// confirmed in about 0.2 s instead of 1 s, while a hung one (timeouts) still needs the
    /// whole `interval` × `unhealthy_threshold` window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recheck_interval: Option<Duration>,
    /// How long a restarted daemon trusts its record (kept on disk) of which standbys the
    /// primary last listed as synchronous, counted from when that was last seen. In a sync
    /// tier a daemon that restarts while the primary is down promotes only on this record;
    /// older, the primary may have run unobserved with another synchronous set, so it holds
    /// for a person (`lifeboat failover --accept-data-loss`). Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_record_max_age: Option<Duration>,
    /// HTTP health endpoints for external load balancers, one address per member site
    /// (as Patroni's REST API): `GET /primary` answers 200 only on the member Lifeboat routes
    /// writes to, `GET /replica` 200 only on a healthy streaming standby, `GET /health` 200
    /// on any member that answers its checks; others 503. Body: the member's state as JSON.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub health_listen: BTreeMap<String, String>,
    /// With agents (`coordinator:`): a traffic endpoint per site, each a TCP proxy to the
    /// member holding the service's leader key — run by that site's `lifeboat agent` (or by
    /// `lifeboat endpoint --site SITE` on a site without a member). Each routes only to the
    /// current token holder once its server takes writes, never back to an older token, and
    /// drops every connection when it cannot read etcd. Clients list them all
    /// (`host=east-proxy,west-proxy target_session_attrs=read-write`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub site_listen: BTreeMap<String, String>,
    /// Extra checks per site that must pass for a member to count as healthy (besides the
    /// built-in PostgreSQL check: connect, `SELECT 1`, role, LSNs).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub health_checks: BTreeMap<String, Vec<HealthCheck>>,
    /// Witness checks per site: whether the member's *clients* still reach it (e.g. an HTTP
    /// endpoint of an application server at that site that reports its own database
    /// connection). Run only while the member fails Lifeboat's own checks; if they pass, Lifeboat
    /// is the one cut off (a partition), the member has not failed, and there is no failover.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub witness: BTreeMap<String, Vec<HealthCheck>>,
    /// A DNS name that follows the primary (the built-in responder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsSpec>,
}

/// The built-in DNS responder's record for a service: `name` answers with the record of the
/// member traffic goes to (A for IPv4, AAAA for IPv6, CNAME for a host name); SERVFAIL while
/// none may take writes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    /// UDP address to answer on, e.g. `0.0.0.0:53` (services may share one).
    pub listen: String,
    /// The name, e.g. `db.lifeboat.internal`.
    pub name: String,
    /// TTL of the answers. Default 5s: clients follow a failover within seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// The record per site. Default: the member's `host`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub records: BTreeMap<String, String>,
}

impl DnsSpec {
    /// The name as the responder matches it: lower case, without the trailing dot.
    pub fn key(&self) -> String {
        self.name.trim_end_matches('.').to_ascii_lowercase()
    }
}

/// One extra health check: exactly one of `http`, `tcp`, `command`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// URL to GET (`http://` or `https://`); passes on `status` (default: any 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Status the HTTP check expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Text the HTTP response body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `host:port` that must accept a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// Shell command that must exit 0 (run with `sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Deadline of this check. Default: the failover `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Replication settings of a PostgreSQL service.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    /// `sync` (RPO 0: only a synchronous standby may be promoted) or `async`.
    pub mode: ReplicationMode,
    /// Most a standby may lag and still be promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_on_failover: Option<Size>,
    /// The role standbys stream as, when Lifeboat makes a member a standby (switchover,
    /// rejoin). Default: the one the new primary itself streamed as (its `primary_conninfo`),
    /// else the member's `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Its password (`${ENV}` or `file:PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    Sync,
    Async,
}

/// A restic-format repository (encrypted, compressed, deduplicated).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// A local path (relative to the plan file), or
    /// `s3://BUCKET/PREFIX?endpoint=URL&region=REGION` for an S3-compatible server.
    pub url: String,
    /// File holding the repository password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// Environment variable holding the repository password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    /// Command printing the repository password (e.g. `vault kv get -field=key ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_command: Option<String>,
    /// zstd level (1..=22, negative for faster). Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<i32>,
    /// S3 access key id (for `s3://` URLs); default: `AWS_ACCESS_KEY_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<Secret>,
    /// S3 secret access key; default: `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
}

/// A backup job: which service, into which repository, when, and how long to keep it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupJob {
    /// The service to back up.
    pub service: String,
    /// The repository to write to. Default: the only repository, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// When the daemon runs it (cron `m h dom mon dow`, or `@hourly`, `@daily`, `@weekly`,
    /// `@monthly`; or `{ cron, time_zone, jitter, catch_up }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// How many snapshots to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Repositories to copy each new snapshot to (cross-region copies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copy_to: Vec<String>,
    /// What `lifeboat verify` checks for this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyPolicy>,
    /// For postgres services: `base` (physical base backup, the default) or `dump`
    /// (`pg_dump -Fc` of each of the service's `databases`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<BackupMethod>,
    /// For postgres services: the site of the member to back up (a standby spares the
    /// primary). Default: the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// For postgres services: a `pg_basebackup` or `pg_dump` that writes nothing for this long
    /// is stopped and the job fails (a server that froze in the middle of a backup would
    /// otherwise keep it waiting forever). Default 10m: a fast checkpoint on a big, busy server
    /// can take minutes before the first byte arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_timeout: Option<Duration>,
    /// For postgres base backups, how the data is read: `auto` (the default) reads the data
    /// directory itself when the member's server runs on this host from its `data_dir`, and
    /// otherwise streams it with `pg_basebackup`; `files` always reads the data directory (the
    /// job fails where it cannot); `stream` always uses `pg_basebackup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<BaseVia>,
}

/// How a base backup reads the cluster (see [`BackupJob::via`]).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BaseVia {
    #[default]
    Auto,
    Files,
    Stream,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackupMethod {
    #[default]
    Base,
    Dump,
}

/// Retention policy. Each rule keeps the newest snapshot of that many periods; a snapshot kept
/// by any rule stays.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the last N snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yearly: Option<u32>,
    /// Keep every snapshot younger than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Duration>,
}

impl Retention {
    /// Whether any rule keeps anything. A policy with none would delete every snapshot.
    pub fn has_keep_rule(&self) -> bool {
        [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ]
        .iter()
        .any(|r| r.is_some_and(|n| n > 0))
            || self.within.is_some_and(|d| !d.0.is_zero())
    }
}

/// Verification policy of a job.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyPolicy {
    /// The newest snapshot must be younger than this. Default: the service tier's RPO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// At least this many snapshots must be retained. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_snapshots: Option<u32>,
}

/// A notification target: a webhook or an e-mail address list.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// The name escalation levels use for it (default: `webhook-N` / `email-N`, N its place in
    /// the list from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Webhook URL (usually a secret: `${SLACK_WEBHOOK}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Secret>,
    /// E-mail over SMTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailSpec>,
    /// Webhook payload: `json` (default), `slack`, or `statuspage` (a status page's incident:
    /// name, status, impact, body).
    #[serde(default)]
    pub format: NotificationFormat,
    /// Only events at least this severe (P1 most severe). Default: P4 (everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_severity: Option<Severity>,
    /// Only these kinds of event (`failover`, `switchover`, `hold`, `fence`, `incident`,
    /// `escalation`, `resolved`, …). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Deadline of one delivery attempt. Default 5s (e-mail: 15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Attempts after the first failed one (1 s, 2 s, 4 s … apart). Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

impl Notification {
    /// Its name: the plan's, or `webhook-N` / `email-N` (`index` from 0).
    pub fn name_at(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                if self.email.is_some() {
                    "email"
                } else {
                    "webhook"
                },
                index + 1
            )
        })
    }
}

/// E-mail delivery over SMTP.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    /// Recipients.
    pub to: Vec<String>,
    /// Sender address.
    pub from: String,
    /// The SMTP server, `host:port`.
    pub smtp: String,
    /// `starttls` (default), `tls` (implicit, port 465), or `none` (a relay on this host or
    /// this network only: the message and the password travel in the clear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

/// Who is told next while an incident stays unacknowledged.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    /// The severities that escalate. Default: P1 and P2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severities: Option<Vec<Severity>>,
    /// In order: each level is notified once its delay since the incident opened has passed
    /// and nobody acknowledged it (`lifeboat ack INCIDENT`).
    pub levels: Vec<EscalationLevel>,
}

/// One escalation level.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscalationLevel {
    /// Who this is, in words (`on-call`, `team lead`, `engineering manager`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How long after the incident opened (`0s`: at once).
    pub after: Duration,
    /// The notification targets (by `name`) to tell.
    pub notify: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotificationFormat {
    #[default]
    Json,
    Slack,
    Statuspage,
}

/// Incident severity: P1 critical … P4 low.
#[derive(
    Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum Severity {
    P1,
    P2,
    P3,
    P4,
}

impl BackupJob {
    /// The snapshot kind this job produces from `svc`.
    pub fn snapshot_kind(&self, svc: &Service) -> &'static str {
        match (svc, self.method) {
            (Service::Postgres { .. }, Some(BackupMethod::Dump)) => "dump",
            _ => svc.snapshot_kind(),
        }
    }
}

impl Plan {
    /// The repository holding a postgres service's WAL archive.
    pub fn wal_repository(&self, service: &str) -> Option<&str> {
        if let Some(Service::Postgres {
            wal_repository: Some(r),
            ..
        }) = self.services.get(service)
        {
            return Some(r);
        }
        let from_job = self
            .backups
            .values()
            .filter(|j| j.service == service && j.method.unwrap_or_default() == BackupMethod::Base)
            .find_map(|j| self.job_repository(j));
        from_job.or_else(|| {
            (self.repositories.len() == 1)
                .then(|| self.repositories.keys().next().map(String::as_str))
                .flatten()
        })
    }

    /// The repository a job writes to: its own, or the plan's only repository.
    pub fn job_repository<'a>(&'a self, job: &'a BackupJob) -> Option<&'a str> {
        match &job.repository {
            Some(r) => Some(r.as_str()),
            None if self.repositories.len() == 1 => {
                self.repositories.keys().next().map(|k| k.as_str())
            }
            None => None,
        }
    }
}
