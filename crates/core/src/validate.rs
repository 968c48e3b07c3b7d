//! Semantic checks of a plan: references resolve, policies make sense.
//!
//! Pure: returns `(field path, message)` pairs; the loader turns paths into line/column.

use std::collections::{BTreeMap, BTreeSet};

use crate::plan::{Plan, Service};

/// Names declared in the file (including entries that failed to parse).
#[derive(Default, Debug)]
pub struct Declared {
    pub tiers: BTreeSet<String>,
    pub services: BTreeSet<String>,
    pub repositories: BTreeSet<String>,
}

impl Declared {
    pub fn from_names(names: impl Fn(&str) -> BTreeSet<String>) -> Self {
        Self {
            tiers: names("tiers"),
            services: names("services"),
            repositories: names("repositories"),
        }
    }
}

fn list(names: &BTreeSet<String>) -> String {
    if names.is_empty() {
        "none are declared".into()
    } else {
        format!(
            "declared: {}",
            names
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Validate a schedule: its cron expression (5 fields or an `@` nickname) and time zone.
pub fn check_schedule(s: &crate::plan::Schedule) -> Result<(), String> {
    crate::schedule::parse(s).map(|_| ())
}

/// Every semantic problem in the plan, as (field path, message).
pub fn validate(plan: &Plan, declared: &Declared) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut err = |p: String, m: String| out.push((p, m));

    if plan.name.trim().is_empty() {
        err("name".into(), "the plan name must not be empty".into());
    }
    for (name, tier) in &plan.tiers {
        if let Some(a) = tier.availability {
            if !(a > 0.0 && a <= 100.0) {
                err(
                    format!("tiers.{name}.availability"),
                    format!("availability {a} is not a percentage in (0, 100]"),
                );
            }
        }
    }
    let mut seen_sites = BTreeSet::new();
    for (i, s) in plan.sites.iter().enumerate() {
        if !valid_name(s) {
            err(
                format!("sites[{i}]"),
                format!("site name `{s}` may only use letters, digits, `-`, `_`, `.`"),
            );
        }
        if !seen_sites.insert(s) {
            err(format!("sites[{i}]"), format!("site `{s}` is listed twice"));
        }
    }
    let sites: BTreeSet<String> = plan.sites.iter().cloned().collect();

    for (name, svc) in &plan.services {
        let base = format!("services.{name}");
        if !valid_name(name) {
            err(
                base.clone(),
                format!("service name `{name}` may only use letters, digits, `-`, `_`, `.`"),
            );
        }
        if !declared.tiers.contains(svc.tier()) {
            err(
                format!("{base}.tier"),
                format!(
                    "tier `{}` is not defined ({})",
                    svc.tier(),
                    list(&declared.tiers)
                ),
            );
        }
        for (i, d) in svc.depends_on().iter().enumerate() {
            if !declared.services.contains(d) {
                err(
                    format!("{base}.depends_on[{i}]"),
                    format!(
                        "depends on undeclared service `{d}` ({})",
                        list(&declared.services)
                    ),
                );
            }
        }
        match svc {
            Service::Bucket {
                source,
                replica,
                interval,
                reconcile,
                parallel,
                ..
            } => {
                let mut where_ = Vec::new();
                for (side, b) in [("source", source), ("replica", replica)] {
                    match crate::repo_url::RepoUrl::parse(&b.url) {
                        Ok(crate::repo_url::RepoUrl::S3 {
                            bucket,
                            prefix,
                            options,
                        }) => where_.push((options.get("endpoint").cloned(), bucket, prefix)),
                        Ok(_) => err(
                            format!("{base}.{side}.url"),
                            format!(
                                "`{}` is not an s3:// URL (s3://BUCKET[/PREFIX]?endpoint=URL&region=R)",
                                b.url
                            ),
                        ),
                        Err(e) => err(format!("{base}.{side}.url"), e),
                    }
                    if let Some(site) = &b.site {
                        if !sites.contains(site) {
                            err(
                                format!("{base}.{side}.site"),
                                format!("site `{site}` is not in `sites` ({})", list(&sites)),
                            );
                        }
                    }
                }
                if let [a, b] = where_.as_slice() {
                    let overlap = a.0 == b.0
                        && a.1 == b.1
                        && (a.2.starts_with(&b.2) || b.2.starts_with(&a.2));
                    if overlap {
                        err(
                            format!("{base}.replica.url"),
                            "the replica is the source bucket (or inside it): it must be another bucket or a prefix outside the source's".into(),
                        );
                    }
                }
                for (k, d) in [("interval", interval), ("reconcile", reconcile)] {
                    if d.is_some_and(|d| d.std().is_zero()) {
                        err(format!("{base}.{k}"), "must be more than 0".into());
                    }
                }
                if parallel.is_some_and(|p| p == 0 || p > 64) {
                    err(format!("{base}.parallel"), "must be 1 to 64".into());
                }
            }
            Service::Paths { paths, site, .. } => {
                if paths.is_empty() {
                    err(
                        format!("{base}.paths"),
                        "a `paths` service needs at least one path".into(),
                    );
                }
                for (i, p) in paths.iter().enumerate() {
                    if p.trim().is_empty() {
                        err(format!("{base}.paths[{i}]"), "empty path".into());
                    }
                }
                check_site(&mut err, &base, site.as_deref(), &sites);
            }
            Service::Command {
                command,
                filename,
                site,
                ..
            } => {
                if command.trim().is_empty() {
                    err(
                        format!("{base}.command"),
                        "the command must not be empty".into(),
                    );
                }
                if let Some(f) = filename {
                    if f.is_empty() || f.contains('/') || f == "." || f == ".." {
                        err(
                            format!("{base}.filename"),
                            format!("`{f}` is not a plain file name (no `/`)"),
                        );
                    }
                }
                check_site(&mut err, &base, site.as_deref(), &sites);
            }
            Service::Postgres {
                members,
                wal_repository,
                failover,
                wal_stream,
                ..
            } => {
                if let Some(ws) = wal_stream {
                    let slot = ws.slot_for(name);
                    if slot.is_empty()
                        || slot.len() > 63
                        || !slot
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    {
                        err(
                            format!("{base}.wal_stream.slot"),
                            format!("`{slot}` is not a replication slot name (lower-case letters, digits and `_`, at most 63)"),
                        );
                    }
                    if ws.interval.is_some_and(|d| d.std().is_zero()) {
                        err(
                            format!("{base}.wal_stream.interval"),
                            "must be more than 0".into(),
                        );
                    }
                }
                if let Some(f) = failover {
                    if members.len() < 2 {
                        err(
                            format!("{base}.failover"),
                            format!(
                                "automatic failover needs members in at least two sites (this service has {}): with one there is nothing to fail over to",
                                members.len()
                            ),
                        );
                    }
                    if let Some(l) = &f.listen {
                        if l.parse::<std::net::SocketAddr>().is_err() {
                            err(
                                format!("{base}.failover.listen"),
                                format!(
                                    "`{l}` is not an address to listen on (e.g. 127.0.0.1:6432)"
                                ),
                            );
                        }
                    }
                    if f.unhealthy_threshold == Some(0) || f.healthy_threshold == Some(0) {
                        err(
                            format!("{base}.failover"),
                            "thresholds must be at least 1".into(),
                        );
                    }
                    check_listen_per_site(
                        &mut err,
                        &format!("{base}.failover.health_listen"),
                        &f.health_listen,
                        |s| members.contains_key(s),
                        "is not a member of this service",
                        "127.0.0.1:8008",
                    );
                    check_listen_per_site(
                        &mut err,
                        &format!("{base}.failover.site_listen"),
                        &f.site_listen,
                        |s| sites.contains(s),
                        "is not one of the plan's sites",
                        "10.0.1.5:6432",
                    );
                    if !f.site_listen.is_empty() && plan.coordinator.is_none() {
                        err(
                            format!("{base}.failover.site_listen"),
                            "endpoints per site follow the leader key in etcd: add `coordinator:` (or use `listen` with `lifeboat serve`)".into(),
                        );
                    }
                    for (key, map) in [("health_checks", &f.health_checks), ("witness", &f.witness)]
                    {
                        check_health_checks(
                            &mut err,
                            &format!("{base}.failover.{key}"),
                            map,
                            members,
                        );
                    }
                    if let Some(d) = &f.dns {
                        check_dns(
                            &mut err,
                            &format!("{base}.failover.dns"),
                            d,
                            |s| members.contains_key(s),
                            "is not a member of this service",
                        );
                    }
                    let mut seen: BTreeMap<(String, u16), &String> = BTreeMap::new();
                    for (site, m) in members {
                        if let Some(other) = seen.insert((m.host.clone(), m.port), site) {
                            err(
                                format!("{base}.members.{site}"),
                                format!(
                                    "members {other} and {site} are the same server ({}:{}): failover needs a standby on another server",
                                    m.host, m.port
                                ),
                            );
                        }
                    }
                }
                if members.is_empty() {
                    err(
                        format!("{base}.members"),
                        "a postgres service needs at least one member".into(),
                    );
                }
                for (site, m) in members {
                    if let Some(ns) = &m.netns {
                        if !valid_name(ns) {
                            err(
                                format!("{base}.members.{site}.netns"),
                                format!("network namespace `{ns}` may only use letters, digits, `-`, `_`, `.`"),
                            );
                        }
                    }
                    if !sites.contains(site) {
                        err(
                            format!("{base}.members.{site}"),
                            format!("member site `{site}` is not in `sites` ({})", list(&sites)),
                        );
                    }
                }
                if let Some(r) = wal_repository {
                    if !declared.repositories.contains(r) {
                        err(
                            format!("{base}.wal_repository"),
                            format!(
                                "undeclared repository `{r}` ({})",
                                list(&declared.repositories)
                            ),
                        );
                    }
                }
            }
            Service::Http {
                health,
                order,
                follows,
                checks,
                dns,
                on_change,
                ..
            } => {
                for (site, h) in health {
                    if !sites.contains(site) {
                        err(
                            format!("{base}.health.{site}"),
                            format!("site `{site}` is not in `sites` ({})", list(&sites)),
                        );
                    }
                    let h = h.spec();
                    if !(h.url.starts_with("http://") || h.url.starts_with("https://"))
                        || h.host().is_none()
                    {
                        err(
                            format!("{base}.health.{site}"),
                            format!("`{}` is not an http:// or https:// URL", h.url),
                        );
                    }
                    if h.timeout.is_some_and(|t| t.std().is_zero()) {
                        err(
                            format!("{base}.health.{site}.timeout"),
                            "must be more than 0".into(),
                        );
                    }
                }
                let mut seen = BTreeSet::new();
                for (i, site) in order.iter().enumerate() {
                    if !health.contains_key(site) {
                        err(
                            format!("{base}.order[{i}]"),
                            format!(
                                "site `{site}` has no health check in `health` (sites checked: {})",
                                list(&health.keys().cloned().collect())
                            ),
                        );
                    }
                    if !seen.insert(site) {
                        err(
                            format!("{base}.order[{i}]"),
                            format!("site `{site}` is listed twice"),
                        );
                    }
                }
                if health.is_empty() {
                    err(
                        format!("{base}.health"),
                        "an http service needs a health check in at least one site".into(),
                    );
                }
                if let Some(c) = checks {
                    if c.unhealthy_threshold == Some(0) || c.healthy_threshold == Some(0) {
                        err(
                            format!("{base}.checks"),
                            "thresholds must be at least 1".into(),
                        );
                    }
                    for (k, d) in [("interval", c.interval), ("timeout", c.timeout)] {
                        if d.is_some_and(|d| d.std().is_zero()) {
                            err(format!("{base}.checks.{k}"), "must be more than 0".into());
                        }
                    }
                }
                if let Some(f) = follows {
                    match plan.services.get(f) {
                        None => err(
                            format!("{base}.follows"),
                            format!(
                                "undeclared service `{f}` ({})",
                                list(&declared.services)
                            ),
                        ),
                        Some(Service::Postgres { failover, .. }) => {
                            if failover.is_none() {
                                err(
                                    format!("{base}.follows"),
                                    format!("`{f}` has no `failover:`: nothing routes its primary, so there is nothing to follow"),
                                );
                            } else if plan.coordinator.is_some() {
                                err(
                                    format!("{base}.follows"),
                                    "following a database coordinated by agents (`coordinator:`) is not supported yet: `lifeboat serve` follows the primary it routes itself".into(),
                                );
                            }
                        }
                        Some(other) => err(
                            format!("{base}.follows"),
                            format!(
                                "`{f}` is a {} service: an app follows a postgres service's primary",
                                other.kind()
                            ),
                        ),
                    }
                }
                if let Some(d) = dns {
                    check_dns(
                        &mut err,
                        &format!("{base}.dns"),
                        d,
                        |s| health.contains_key(s),
                        "has no health check in `health`",
                    );
                }
                if let Some(r) = on_change {
                    if !plan.runbooks.contains_key(r) {
                        err(
                            format!("{base}.on_change"),
                            format!(
                                "undeclared runbook `{r}` ({})",
                                list(&plan.runbooks.keys().cloned().collect())
                            ),
                        );
                    }
                }
            }
        }
    }
    // Two services answering the same name on one responder would flip its answer.
    let mut names: BTreeMap<(String, String), &String> = BTreeMap::new();
    for (name, svc) in &plan.services {
        let (d, at) = match svc {
            Service::Postgres {
                failover: Some(f), ..
            } => (f.dns.as_ref(), "failover.dns"),
            Service::Http { dns, .. } => (dns.as_ref(), "dns"),
            _ => (None, ""),
        };
        if let Some(d) = d {
            let key = (d.listen.clone(), d.key());
            if let Some(other) = names.insert(key, name) {
                err(
                    format!("services.{name}.{at}.name"),
                    format!(
                        "service `{other}` already answers `{}` on {}",
                        d.name, d.listen
                    ),
                );
            }
        }
    }
    for (rb_name, rb) in &plan.runbooks {
        let base = format!("runbooks.{rb_name}");
        if let Some(k) = &rb.kind {
            if ![
                "failover",
                "switchover",
                "failback",
                "restoration",
                "manual",
            ]
            .contains(&k.as_str())
            {
                err(
                    format!("{base}.kind"),
                    format!(
                        "unknown kind `{k}` (failover, switchover, failback, restoration, manual)"
                    ),
                );
            }
        }
        if let Some(svc) = &rb.service {
            if !plan.services.contains_key(svc) {
                err(
                    format!("{base}.service"),
                    format!("unknown service `{svc}`"),
                );
            }
        }
        if rb.steps.is_empty() {
            err(
                format!("{base}.steps"),
                "a runbook needs at least one step".into(),
            );
        }
        for (i, st) in rb.steps.iter().enumerate() {
            let at = format!("{base}.steps[{i}]");
            exactly_one(
                &mut err,
                &at,
                "a step",
                &[
                    ("action", st.action.is_some()),
                    ("command", st.command.is_some()),
                    ("webhook", st.webhook.is_some()),
                ],
            );
            if let Some(a) = &st.action {
                if !crate::plan::RUNBOOK_ACTIONS.contains(&a.as_str()) {
                    err(
                        format!("{at}.action"),
                        format!(
                            "unknown action `{a}` (built-in: {}; or use `command:` / `webhook:`)",
                            crate::plan::RUNBOOK_ACTIONS.join(", ")
                        ),
                    );
                }
                let service = st.service.as_ref().or(rb.service.as_ref());
                // A failback runbook's rejoin and switchover go to `lifeboat failback --to`.
                let site_from_command = rb.kind.as_deref() == Some("failback")
                    && ["rejoin", "switchover"].contains(&a.as_str());
                let needs_site = ["fence", "promote", "switch-traffic", "rejoin", "switchover"]
                    .contains(&a.as_str())
                    && !site_from_command;
                if a != "notify" && service.is_none() && a != "restore" {
                    err(
                        at.clone(),
                        format!("`{a}` needs a `service` (on the step or the runbook)"),
                    );
                }
                if needs_site && st.site.is_none() {
                    err(at.clone(), format!("`{a}` needs a `site`"));
                }
                if a == "restore"
                    && (st.target.is_none() || (st.job.is_none() && service.is_none()))
                {
                    err(
                        at.clone(),
                        "`restore` needs a `target` and a `job` (or a postgres `service`)".into(),
                    );
                }
                if let (Some(svc), Some(site)) = (service, &st.site) {
                    if let Some(Service::Postgres { members, .. }) = plan.services.get(svc) {
                        if !members.contains_key(site) {
                            err(
                                format!("{at}.site"),
                                format!("`{site}` is not a member of {svc}"),
                            );
                        }
                    }
                }
                if let Some(j) = &st.job {
                    if !plan.backups.contains_key(j) {
                        err(format!("{at}.job"), format!("unknown backup job `{j}`"));
                    }
                }
            }
            if let Some(svc) = &st.service {
                if !plan.services.contains_key(svc) {
                    err(format!("{at}.service"), format!("unknown service `{svc}`"));
                }
            }
            if let Some(f) = &st.on_failure {
                if f != "stop" && f != "continue" {
                    err(
                        format!("{at}.on_failure"),
                        format!("`{f}`: use stop or continue"),
                    );
                }
            }
        }
    }
    if let Some(cycle) = dependency_cycle(plan) {
        err(
            format!("services.{}.depends_on", cycle[0]),
            format!("dependency cycle: {}", cycle.join(" → ")),
        );
    }

    for (name, repo) in &plan.repositories {
        let base = format!("repositories.{name}");
        if !valid_name(name) {
            err(
                base.clone(),
                format!("repository name `{name}` may only use letters, digits, `-`, `_`, `.`"),
            );
        }
        if repo.url.trim().is_empty() {
            err(
                format!("{base}.url"),
                "the repository URL must not be empty".into(),
            );
        } else if let Err(e) = crate::repo_url::RepoUrl::parse(&repo.url) {
            err(format!("{base}.url"), e);
        }
        let sources = [&repo.key_file, &repo.key_env, &repo.key_command]
            .iter()
            .filter(|k| k.is_some())
            .count();
        if sources != 1 {
            err(
                base.clone(),
                format!(
                    "exactly one of `key_file`, `key_env`, `key_command` must give the repository password ({sources} given)"
                ),
            );
        }
        if let Some(level) = repo.compression {
            if !(-7..=22).contains(&level) {
                err(
                    format!("{base}.compression"),
                    format!("zstd level {level} is out of range: expected -7..=22"),
                );
            }
        }
    }

    for (name, job) in &plan.backups {
        let base = format!("backups.{name}");
        if !valid_name(name) {
            err(
                base.clone(),
                format!("job name `{name}` may only use letters, digits, `-`, `_`, `.`"),
            );
        }
        if !declared.services.contains(&job.service) {
            err(
                format!("{base}.service"),
                format!(
                    "job names undeclared service `{}` ({})",
                    job.service,
                    list(&declared.services)
                ),
            );
        } else if let Some(svc) = plan.services.get(&job.service) {
            if matches!(svc, Service::Http { .. }) {
                err(
                    format!("{base}.service"),
                    format!(
                        "service `{}` is of kind http, which has nothing to back up",
                        job.service
                    ),
                );
            }
            if matches!(svc, Service::Bucket { .. }) {
                err(
                    format!("{base}.service"),
                    format!(
                        "service `{}` is a bucket: the daemon keeps it replicated to its `replica` (no backup job)",
                        job.service
                    ),
                );
            }
            match svc {
                Service::Postgres {
                    members, databases, ..
                } => {
                    if let Some(site) = &job.from {
                        if !members.contains_key(site) {
                            err(
                                format!("{base}.from"),
                                format!(
                                    "service `{}` has no member in site `{site}` ({})",
                                    job.service,
                                    list(&members.keys().cloned().collect())
                                ),
                            );
                        }
                    }
                    if job.method == Some(crate::plan::BackupMethod::Dump) && databases.is_empty() {
                        err(
                            format!("{base}.method"),
                            format!(
                                "method dump needs the service `{}` to list `databases`",
                                job.service
                            ),
                        );
                    }
                    if job.via.is_some() && job.method == Some(crate::plan::BackupMethod::Dump) {
                        err(
                            format!("{base}.via"),
                            "`via` applies to base backups only (this job dumps)".into(),
                        );
                    }
                }
                _ => {
                    if job.via.is_some() {
                        err(
                            format!("{base}.via"),
                            "`via` applies to postgres base backups only".into(),
                        );
                    }
                    if job.method.is_some() {
                        err(
                            format!("{base}.method"),
                            "`method` applies to postgres services only".into(),
                        );
                    }
                    if job.from.is_some() {
                        err(
                            format!("{base}.from"),
                            "`from` applies to postgres services only".into(),
                        );
                    }
                }
            }
        }
        match &job.repository {
            Some(r) if !declared.repositories.contains(r) => err(
                format!("{base}.repository"),
                format!(
                    "job names undeclared repository `{r}` ({})",
                    list(&declared.repositories)
                ),
            ),
            None if declared.repositories.len() != 1 => err(
                base.clone(),
                format!(
                    "the job must say which `repository` to use ({})",
                    list(&declared.repositories)
                ),
            ),
            _ => {}
        }
        for (i, c) in job.copy_to.iter().enumerate() {
            if !declared.repositories.contains(c) {
                err(
                    format!("{base}.copy_to[{i}]"),
                    format!(
                        "copy target `{c}` is an undeclared repository ({})",
                        list(&declared.repositories)
                    ),
                );
            } else if plan.job_repository(job) == Some(c.as_str()) {
                err(
                    format!("{base}.copy_to[{i}]"),
                    format!("copy target `{c}` is the job's own repository"),
                );
            }
        }
        if let Some(s) = &job.schedule {
            if let Err(e) = check_schedule(s) {
                err(format!("{base}.schedule"), e);
            }
        }
        if let Some(r) = &job.retention {
            if !r.has_keep_rule() {
                err(
                    format!("{base}.retention"),
                    "retention has no keep rule, so it would delete every snapshot: set at least one of last, hourly, daily, weekly, monthly, yearly, within".into(),
                );
            }
        }
    }
    for (name, d) in &plan.drills {
        check_drill(&mut err, plan, name, d);
    }
    for (name, t) in &plan.schedules {
        check_task(&mut err, plan, name, t);
    }
    if let Some(m) = &plan.metrics {
        if m.listen.parse::<std::net::SocketAddr>().is_err() {
            err(
                "metrics.listen".into(),
                format!(
                    "`{}` is not an address to serve /metrics on (e.g. 127.0.0.1:9187)",
                    m.listen
                ),
            );
        }
    }
    if let Some(a) = &plan.api {
        check_api(&mut err, a);
    }
    if let Some(c) = &plan.coordinator {
        check_coordinator(&mut err, c);
        if let Some(f) = &c.failsafe {
            check_listen_per_site(
                &mut err,
                "coordinator.failsafe.listen",
                &f.listen,
                |s| plan.sites.iter().any(|x| x == s),
                "is not one of the plan's sites",
                "10.0.1.5:7434",
            );
            if f.key_file.trim().is_empty() {
                err(
                    "coordinator.failsafe.key_file".into(),
                    "name a file holding the secret the agents share (at least 16 bytes)".into(),
                );
            }
            for (name, svc) in &plan.services {
                if let Service::Postgres { members, .. } = svc {
                    for site in members.keys() {
                        if !f.listen.contains_key(site) {
                            err(
                                "coordinator.failsafe.listen".into(),
                                format!("{name} has a member at {site}: give its agent an address to listen on (e.g. {site}: \"10.0.1.5:7434\")"),
                            );
                        }
                    }
                }
            }
        }
    }
    check_notifications(&mut err, plan);
    if plan.scheduler.as_ref().and_then(|s| s.max_concurrent) == Some(0) {
        err(
            "scheduler.max_concurrent".into(),
            "at least one scheduled run must be allowed at a time".into(),
        );
    }
    out
}

/// Notification targets: one way each (webhook or e-mail), names that differ, escalation
/// levels naming targets that exist, in order of their delays.
fn check_notifications(err: &mut impl FnMut(String, String), plan: &Plan) {
    let mut names = std::collections::BTreeSet::new();
    for (i, n) in plan.notifications.iter().enumerate() {
        let base = format!("notifications[{i}]");
        match (&n.webhook, &n.email) {
            (Some(_), None) => {}
            (None, Some(e)) => {
                if e.to.is_empty() {
                    err(format!("{base}.email.to"), "no recipient".into());
                }
                for (j, a) in e.to.iter().enumerate() {
                    if !a.contains('@') {
                        err(
                            format!("{base}.email.to[{j}]"),
                            format!("`{a}` is not an e-mail address"),
                        );
                    }
                }
                if !e.from.contains('@') {
                    err(
                        format!("{base}.email.from"),
                        format!("`{}` is not an e-mail address", e.from),
                    );
                }
                if e.smtp
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    err(
                        format!("{base}.email.smtp"),
                        format!(
                            "`{}` is not `host:port` (e.g. smtp.example.com:587)",
                            e.smtp
                        ),
                    );
                }
                if let Some(t) = &e.tls {
                    if !["starttls", "tls", "none"].contains(&t.as_str()) {
                        err(
                            format!("{base}.email.tls"),
                            format!("unknown `{t}`: one of starttls, tls, none"),
                        );
                    }
                }
                if e.password.is_some() && e.user.is_none() {
                    err(
                        format!("{base}.email.user"),
                        "a password needs a user".into(),
                    );
                }
            }
            _ => err(
                base.clone(),
                "give exactly one of `webhook` or `email`".into(),
            ),
        }
        if !names.insert(n.name_at(i)) {
            err(
                format!("{base}.name"),
                format!("two notification targets are named `{}`", n.name_at(i)),
            );
        }
    }
    if let Some(e) = &plan.escalation {
        let mut last = None;
        for (i, l) in e.levels.iter().enumerate() {
            let base = format!("escalation.levels[{i}]");
            if l.notify.is_empty() {
                err(
                    format!("{base}.notify"),
                    "names no notification target".into(),
                );
            }
            for (j, t) in l.notify.iter().enumerate() {
                if !names.contains(t) {
                    err(
                        format!("{base}.notify[{j}]"),
                        format!(
                            "no notification target `{t}` (give it `name: {t}` under notifications; the plan's: {})",
                            names.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
            if last.is_some_and(|p| l.after.0 < p) {
                err(
                    format!("{base}.after"),
                    "levels are in order: each comes no sooner than the one before".into(),
                );
            }
            last = Some(l.after.0);
        }
        if e.levels.is_empty() {
            err("escalation.levels".into(), "no level".into());
        }
    }
}

/// The API: an address, tokens with a known role and one way to know each.
/// A map of site → address to listen on: every site known (`known`), every address one.
fn check_listen_per_site(
    err: &mut impl FnMut(String, String),
    at: &str,
    map: &std::collections::BTreeMap<String, String>,
    known: impl Fn(&str) -> bool,
    unknown: &str,
    example: &str,
) {
    for (site, addr) in map {
        let at = format!("{at}.{site}");
        if !known(site) {
            err(at.clone(), format!("`{site}` {unknown}"));
        }
        if addr.parse::<std::net::SocketAddr>().is_err() {
            err(
                at,
                format!("`{addr}` is not an address to listen on (e.g. {example})"),
            );
        }
    }
}

fn check_coordinator(err: &mut impl FnMut(String, String), c: &crate::plan::CoordinatorSpec) {
    if c.etcd.is_empty() {
        err(
            "coordinator.etcd".into(),
            "name at least one etcd member (host:port), one per site".into(),
        );
    }
    for (i, e) in c.etcd.iter().enumerate() {
        let hostport = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .unwrap_or(e);
        let ok = hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            err(
                format!("coordinator.etcd[{i}]"),
                format!("`{e}` is not an etcd client address (host:port, e.g. 10.0.1.5:2379)"),
            );
        }
    }
    let (ttl, renew, margin) = (c.ttl(), c.renew(), c.margin());
    if ttl.as_secs() < 2 || ttl.subsec_nanos() != 0 {
        err(
            "coordinator.ttl".into(),
            format!("{ttl:?}: etcd leases count whole seconds; use 2s or more"),
        );
    }
    if margin.is_zero() || margin >= ttl {
        err(
            "coordinator.margin".into(),
            format!("{margin:?} must be more than 0 and less than the ttl ({ttl:?})"),
        );
    } else if renew.is_zero() || renew >= ttl - margin {
        err(
            "coordinator.renew".into(),
            format!(
                "renewing every {renew:?} leaves no second try before the leader must stop (ttl {ttl:?} minus margin {margin:?})"
            ),
        );
    }
}

fn check_api(err: &mut impl FnMut(String, String), a: &crate::plan::ApiSpec) {
    if a.listen.parse::<std::net::SocketAddr>().is_err() {
        err(
            "api.listen".into(),
            format!(
                "`{}` is not an address to serve the API on (e.g. 127.0.0.1:8470)",
                a.listen
            ),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, t) in a.tokens.iter().enumerate() {
        let base = format!("api.tokens[{i}]");
        if !valid_name(&t.name) {
            err(
                format!("{base}.name"),
                format!(
                    "token name `{}` may only use letters, digits, `-`, `_`, `.`",
                    t.name
                ),
            );
        }
        if !seen.insert(t.name.clone()) {
            err(
                format!("{base}.name"),
                format!(
                    "two tokens are named `{}`: the evidence log could not tell them apart",
                    t.name
                ),
            );
        }
        if !crate::plan::API_ROLES.contains(&t.role.as_str()) {
            err(
                format!("{base}.role"),
                format!("unknown role `{}`: one of viewer, operator, admin", t.role),
            );
        }
        match (&t.sha256, &t.token) {
            (Some(h), None) => {
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    err(
                        format!("{base}.sha256"),
                        "not a SHA-256 in hex (64 characters): `lifeboat api token NAME` prints one".into(),
                    );
                }
            }
            (None, Some(crate::secret::Secret::Inline(_))) => err(
                format!("{base}.token"),
                "a token written into the plan is readable by everyone who reads the plan: use `${VAR}`, `file:PATH`, or `sha256:` with its hash".into(),
            ),
            (None, Some(_)) => {}
            _ => err(
                base,
                "give exactly one of `sha256` (the token's hash) or `token` (`${VAR}` or `file:PATH`)".into(),
            ),
        }
    }
    for (i, o) in a.open.iter().flatten().enumerate() {
        if !crate::plan::API_OPEN.contains(&o.as_str()) {
            err(
                format!("api.open[{i}]"),
                format!("unknown endpoint `{o}`: any of health, livez, readyz, metrics"),
            );
        }
    }
}

/// A `schedules` entry: a known task, fields that apply to it, names that exist.
fn check_task(
    err: &mut impl FnMut(String, String),
    plan: &Plan,
    name: &str,
    t: &crate::plan::Task,
) {
    let base = format!("schedules.{name}");
    if !valid_name(name) {
        err(
            base.clone(),
            format!("schedule name `{name}` may only use letters, digits, `-`, `_`, `.`"),
        );
    }
    if let Err(e) = check_schedule(&t.schedule) {
        err(format!("{base}.schedule"), e);
    }
    if !crate::plan::TASKS.contains(&t.run.as_str()) {
        err(
            format!("{base}.run"),
            format!(
                "unknown task `{}`: one of {} (backup jobs and drills have their own `schedule`)",
                t.run,
                crate::plan::TASKS.join(", ")
            ),
        );
        return;
    }
    let applies: &[&str] = match t.run.as_str() {
        "verify" => &["job", "service", "restore", "read_data", "read_data_subset"],
        "forget" => &["repository"],
        "copy" => &["from", "to"],
        _ => &["repository", "read_data", "read_data_subset"],
    };
    let given = [
        ("job", t.job.is_some()),
        ("service", t.service.is_some()),
        ("restore", t.restore.is_some()),
        ("repository", t.repository.is_some()),
        ("from", t.from.is_some()),
        ("to", t.to.is_some()),
        ("read_data", t.read_data.is_some()),
        ("read_data_subset", t.read_data_subset.is_some()),
    ];
    for (f, set) in given {
        if set && !applies.contains(&f) {
            err(
                format!("{base}.{f}"),
                format!("`{f}` does not apply to `run: {}`", t.run),
            );
        }
    }
    if let Some(j) = &t.job {
        if !plan.backups.contains_key(j) {
            err(
                format!("{base}.job"),
                format!("no backup job `{j}` in the plan"),
            );
        }
    }
    if let Some(sv) = &t.service {
        if !plan.services.contains_key(sv) {
            err(
                format!("{base}.service"),
                format!("no service `{sv}` in the plan"),
            );
        } else if t.restore != Some(true) {
            err(
                format!("{base}.service"),
                "`service` names what a restore proves: set `restore: true` (or name a `job`)"
                    .into(),
            );
        }
    }
    if t.restore == Some(true) && t.job.is_some() {
        err(
            format!("{base}.job"),
            "a restore proves a service: name it with `service`".into(),
        );
    }
    for (f, r) in [
        ("repository", &t.repository),
        ("from", &t.from),
        ("to", &t.to),
    ] {
        if let Some(r) = r {
            if !plan.repositories.contains_key(r) {
                err(
                    format!("{base}.{f}"),
                    format!("no repository `{r}` in the plan"),
                );
            }
        }
    }
    if t.run == "copy" {
        if t.to.is_none() {
            err(
                format!("{base}.to"),
                "a copy needs the repository to copy to (`to`)".into(),
            );
        }
        if t.from.is_none() && plan.repositories.len() != 1 {
            err(
                format!("{base}.from"),
                "name the repository to copy from (`from`): the plan has several".into(),
            );
        }
    }
    if t.read_data == Some(true) && t.read_data_subset.is_some() {
        err(
            format!("{base}.read_data_subset"),
            "read all data (`read_data`) or a subset, not both".into(),
        );
    }
}

/// A drill names a known scenario and a postgres service it can run against.
fn check_drill(
    err: &mut impl FnMut(String, String),
    plan: &Plan,
    name: &str,
    d: &crate::plan::Drill,
) {
    use crate::plan::{DRILL_SCENARIOS, FAILOVER_SCENARIOS};
    let base = format!("drills.{name}");
    if !valid_name(name) {
        err(
            base.clone(),
            format!("drill name `{name}` may only use letters, digits, `-`, `_`, `.`"),
        );
    }
    if !DRILL_SCENARIOS.contains(&d.scenario.as_str()) {
        err(
            format!("{base}.scenario"),
            format!(
                "unknown scenario `{}` (expected one of {})",
                d.scenario,
                DRILL_SCENARIOS.join(", ")
            ),
        );
    }
    match plan.services.get(&d.service) {
        None => err(
            format!("{base}.service"),
            format!(
                "no service `{}` in the plan ({})",
                d.service,
                list(&plan.services.keys().cloned().collect())
            ),
        ),
        Some(Service::Postgres {
            members, failover, ..
        }) => {
            let needs_two =
                FAILOVER_SCENARIOS.contains(&d.scenario.as_str()) || d.scenario == "switchover";
            if needs_two && members.len() < 2 {
                err(
                    format!("{base}.scenario"),
                    format!(
                        "`{}` needs a member to fail over to, and service `{}` has {} (add a standby in another site, or drill `restore-only` / `corrupt-data`)",
                        d.scenario,
                        d.service,
                        members.len()
                    ),
                );
            }
            if FAILOVER_SCENARIOS.contains(&d.scenario.as_str()) && failover.is_none() {
                err(
                    format!("{base}.scenario"),
                    format!(
                        "`{}` measures an automatic failover, and service `{}` has no `failover` section (`lifeboat serve` would not fail it over)",
                        d.scenario, d.service
                    ),
                );
            }
            if let Some(site) = &d.site {
                if !members.contains_key(site) {
                    err(
                        format!("{base}.site"),
                        format!("`{site}` is not a member of service `{}`", d.service),
                    );
                }
            }
        }
        Some(other) => err(
            format!("{base}.service"),
            format!(
                "drills run against postgres services; `{}` is a {} service",
                d.service,
                other.kind()
            ),
        ),
    }
    if let Some(s) = &d.schedule {
        if let Err(e) = check_schedule(s) {
            err(format!("{base}.schedule"), e);
        }
    }
    if let Some(r) = &d.repository {
        if !plan.repositories.contains_key(r) {
            err(
                format!("{base}.repository"),
                format!(
                    "no repository `{r}` in the plan ({})",
                    list(&plan.repositories.keys().cloned().collect())
                ),
            );
        } else if d.scenario != "restore-only" {
            err(
                format!("{base}.repository"),
                "`repository` applies to the restore-only scenario only".into(),
            );
        }
    }
    if d.hold.is_some() && d.partition.as_deref() != Some("coordinator") {
        err(
            format!("{base}.hold"),
            "`hold` applies to a `coordinator` partition only".into(),
        );
    }
    if let Some(p) = &d.partition {
        if !["isolate", "one-way", "coordinator"].contains(&p.as_str()) {
            err(
                format!("{base}.partition"),
                format!("`{p}` is not one of isolate, one-way, coordinator"),
            );
        } else if d.scenario != "partition-site" {
            err(
                format!("{base}.partition"),
                "`partition` applies to the partition-site scenario only".into(),
            );
        }
    }
    if let Some(w) = &d.workload {
        if w.writers == Some(0) {
            err(
                format!("{base}.workload.writers"),
                "a drill needs at least one writer".into(),
            );
        }
        if let Some(t) = &w.through {
            if t.is_empty() {
                err(
                    format!("{base}.workload.through"),
                    "name at least one path: endpoint, dns".into(),
                );
            }
            for p in t {
                if p != "endpoint" && p != "dns" {
                    err(
                        format!("{base}.workload.through"),
                        format!("unknown path `{p}`: the writers go through `endpoint` or `dns`"),
                    );
                }
            }
        }
    }
    for (i, c) in d.steady_state.iter().enumerate() {
        let at = format!("{base}.steady_state[{i}]");
        exactly_one(
            err,
            &at,
            "a steady-state check",
            &[
                ("sql", c.sql.is_some()),
                ("http", c.http.is_some()),
                ("command", c.command.is_some()),
            ],
        );
        if c.sql.is_none() && (c.expect.is_some() || c.min.is_some() || c.max.is_some()) {
            err(
                at.clone(),
                "`expect`, `min` and `max` apply to `sql` checks only".into(),
            );
        }
        if c.http.is_none() && (c.status.is_some() || c.body.is_some()) {
            err(
                at.clone(),
                "`status` and `body` apply to `http` checks only".into(),
            );
        }
        for (j, w) in c.when.iter().enumerate() {
            if !["before", "during", "after"].contains(&w.as_str()) {
                err(
                    format!("{at}.when[{j}]"),
                    format!("`{w}` is not one of before, during, after"),
                );
            }
        }
    }
}

/// Exactly one of the named fields is set.
fn exactly_one(
    err: &mut impl FnMut(String, String),
    at: &str,
    what: &str,
    fields: &[(&str, bool)],
) {
    if fields.iter().filter(|(_, set)| *set).count() != 1 {
        let names: Vec<String> = fields.iter().map(|(n, _)| format!("`{n}`")).collect();
        err(
            at.to_string(),
            format!("{what} needs exactly one of {}", names.join(", ")),
        );
    }
}

/// Checks per member site: each names a member, and each check is well-formed.
/// A DNS name of the built-in responder: where it answers, the name, a record per site.
fn check_dns(
    err: &mut impl FnMut(String, String),
    base: &str,
    d: &crate::plan::DnsSpec,
    has_site: impl Fn(&str) -> bool,
    not_a_site: &str,
) {
    if d.listen.parse::<std::net::SocketAddr>().is_err() {
        err(
            format!("{base}.listen"),
            format!(
                "`{}` is not an address to answer on (e.g. 127.0.0.1:5353)",
                d.listen
            ),
        );
    }
    let labels_ok = !d.name.trim_end_matches('.').is_empty()
        && d.name.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !labels_ok {
        err(
            format!("{base}.name"),
            format!("`{}` is not a DNS name", d.name),
        );
    }
    for site in d.records.keys() {
        if !has_site(site) {
            err(
                format!("{base}.records.{site}"),
                format!("`{site}` {not_a_site}"),
            );
        }
    }
}

fn check_health_checks<M>(
    err: &mut impl FnMut(String, String),
    base: &str,
    map: &BTreeMap<String, Vec<crate::plan::HealthCheck>>,
    members: &BTreeMap<String, M>,
) {
    for (site, checks) in map {
        if !members.contains_key(site) {
            err(
                format!("{base}.{site}"),
                format!("`{site}` is not a member of this service"),
            );
        }
        for (i, c) in checks.iter().enumerate() {
            let at = format!("{base}.{site}[{i}]");
            exactly_one(
                err,
                &at,
                "a health check",
                &[
                    ("http", c.http.is_some()),
                    ("tcp", c.tcp.is_some()),
                    ("command", c.command.is_some()),
                ],
            );
            if (c.status.is_some() || c.body.is_some()) && c.http.is_none() {
                err(
                    at.clone(),
                    "`status` and `body` apply to `http` checks only".into(),
                );
            }
            if let Some(u) = &c.http {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    err(
                        at.clone(),
                        format!("`{u}` is not an http:// or https:// URL"),
                    );
                }
            }
            if let Some(t) = &c.tcp {
                if t.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    err(at, format!("`{t}` is not host:port"));
                }
            }
        }
    }
}

fn check_site(
    err: &mut impl FnMut(String, String),
    base: &str,
    site: Option<&str>,
    sites: &BTreeSet<String>,
) {
    if let Some(s) = site {
        if !sites.contains(s) {
            err(
                format!("{base}.site"),
                format!("site `{s}` is not in `sites` ({})", list(sites)),
            );
        }
    }
}

/// A cycle in `depends_on`, if any, as the list of services around it.
pub fn dependency_cycle(plan: &Plan) -> Option<Vec<String>> {
    let graph: BTreeMap<&str, Vec<&str>> = plan
        .services
        .iter()
        .map(|(n, s)| {
            (
                n.as_str(),
                s.depends_on().iter().map(|d| d.as_str()).collect(),
            )
        })
        .collect();
    // 0 = unvisited, 1 = on stack, 2 = done
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        n: &'a str,
        g: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let i = stack.iter().position(|s| *s == n).unwrap_or(0);
                let mut c: Vec<String> = stack[i..].iter().map(|s| s.to_string()).collect();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n, 1);
        stack.push(n);
        for d in g.get(n).into_iter().flatten() {
            if g.contains_key(d) {
                if let Some(c) = visit(d, g, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    for n in graph.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(n, &graph, &mut state, &mut stack) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let c = |t: &str| check_schedule(&crate::plan::Schedule::Cron(t.into()));
        assert!(c("0 2 * * *").is_ok());
        assert!(c("*/15 * * * 1-5").is_ok());
        assert!(c("@hourly").is_ok());
        assert!(c("0 10 * * SAT#1").is_ok());
        assert!(c("0 25 * * *").is_err());
        assert!(c("0 2 * *").is_err());
        assert!(c("@sometimes").is_err());
    }
}

/// Things that are valid but probably not what the author wants, as (field path, message).
pub fn warnings(plan: &Plan) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, job) in &plan.backups {
        if job.retention.is_none() {
            out.push((
                format!("backups.{name}"),
                "no retention: its snapshots are kept forever (add e.g. `retention: { daily: 30 }`)"
                    .to_string(),
            ));
        }
    }
    for (name, svc) in &plan.services {
        let backed_up = plan.backups.values().any(|j| &j.service == name);
        if !backed_up && matches!(svc, Service::Paths { .. } | Service::Command { .. }) {
            out.push((
                format!("services.{name}"),
                "no backup job backs this service up".to_string(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod warning_tests {
    use super::*;

    #[test]
    fn unprotected_services_and_endless_retention_are_flagged() {
        let plan = crate::parse_plan(
            "name: t\ntiers: { s: { rpo: 1h, rto: 1h } }\nservices:\n  a: { kind: paths, tier: s, paths: [/a] }\n  b: { kind: paths, tier: s, paths: [/b] }\nrepositories: { r: { url: /r, key_env: K } }\nbackups: { a: { service: a } }\n",
            "p.yaml",
        )
        .unwrap();
        let w = warnings(&plan);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w
            .iter()
            .any(|(p, m)| p == "backups.a" && m.contains("kept forever")));
        assert!(w
            .iter()
            .any(|(p, m)| p == "services.b" && m.contains("no backup job")));
    }
}
