//! `lifeboat rejoin SERVICE SITE`: a failed old primary becomes a standby of the current
//! primary, with a divergence report of what it wrote that the new timeline does not have (see
//! crates/engine/src/rejoin.rs). `lifeboat failback SERVICE --to SITE`: rejoin SITE if it does
//! not stream yet, then switch over to it — one recorded procedure.

use std::time::{Duration, Instant};

use lifeboat_core::plan::Severity;
use lifeboat_failover::rejoin::{rejoin, Report};
use lifeboat_failover::world::Watched;
use lifeboat_pg::ops::Session;

#[derive(clap::Args)]
pub struct Args {
    /// The postgres service.
    service: String,
    /// The member (site) to rejoin as a standby.
    site: String,
}

#[derive(clap::Args)]
pub struct FailbackArgs {
    /// The postgres service, or an http service whose failback is manual.
    service: String,
    /// Postgres: the site to give the primary back to. (An http service goes back to the
    /// first site in its order that passes its checks.)
    #[arg(long)]
    to: Option<String>,
    /// How long the switchover waits for the target to catch up.
    #[arg(long, default_value = "30s")]
    timeout: lifeboat_core::units::Duration,
}

fn print_divergence(r: &Report) {
    match &r.divergence {
        Some(d) if d.bytes > 0 => {
            println!(
                "DIVERGENCE: {} wrote {} bytes of WAL on timeline {} after {} forked off at {} (up to {}):",
                r.member,
                d.bytes,
                d.old_timeline,
                r.primary,
                d.fork_lsn,
                d.old_end_lsn.as_deref().unwrap_or("?")
            );
            println!(
                "  {} committed transaction(s) discarded, {} aborted",
                d.commits.len(),
                d.aborts
            );
            for (xid, when) in d.commits.iter().take(20) {
                println!("    xid {xid} committed {when}");
            }
            if d.commits.len() > 20 {
                println!("    … {} more", d.commits.len() - 20);
            }
            let recs: Vec<String> = d.records.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  records: {}", recs.join(", "));
            if let Some(f) = &d.file {
                println!("  decoded WAL: {}", f.display());
            }
        }
        Some(d) => println!(
            "no divergence: {} wrote nothing after the fork at {}",
            r.member, d.fork_lsn
        ),
        None => println!("no divergence: {} is on {}'s timeline", r.member, r.primary),
    }
}

fn do_rejoin(
    cli: &crate::Cli,
    ctx: &lifeboat_context::Context,
    w: &Watched,
    rt: &tokio::runtime::Runtime,
    site: &str,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let quiet = cli.json;
    let r = rt.block_on(rejoin(w, &ctx.state_dir, site, &move |s| {
        if !quiet {
            println!("  {s}")
        }
    }));
    let (outcome, figures) = match &r {
        Ok(rep) => ("ok", serde_json::to_value(rep).unwrap_or_default()),
        Err(e) => (
            "failed",
            serde_json::json!({"member": site, "error": e.to_string()}),
        ),
    };
    ctx.record("rejoin", &w.service, outcome, started, figures.clone())?;
    let notes = super::Notes::start(ctx, rt, &w.service);
    let (severity, summary) = match &r {
        // Transactions thrown away are worth a page: someone has to look at them.
        Ok(rep) => match rep.divergence.as_ref().filter(|d| !d.commits.is_empty()) {
            Some(d) => (
                Severity::P2,
                format!(
                    "{site} rejoined as a standby of {} ({}); {} committed transaction(s) of its old timeline discarded (divergence report in the evidence log)",
                    rep.primary,
                    rep.method,
                    d.commits.len()
                ),
            ),
            None => (
                Severity::P3,
                format!("{site} rejoined as a standby of {} ({})", rep.primary, rep.method),
            ),
        },
        Err(e) => (Severity::P2, format!("rejoin of {site} FAILED: {e}")),
    };
    notes.send(severity, "rejoin", summary, figures);
    notes.finish(rt);
    Ok(r?)
}

fn watched(ctx: &lifeboat_context::Context, service: &str) -> anyhow::Result<Watched> {
    Watched::from_plan(ctx, service)?
        .ok_or_else(|| anyhow::anyhow!("`{service}` is not a postgres service of the plan"))
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let w = watched(&ctx, &a.service)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = do_rejoin(cli, &ctx, &w, &rt, &a.site)?;
    if cli.json {
        crate::output::json(&r);
    } else {
        print_divergence(&r);
        println!(
            "rejoined {} as a standby of {} ({}{}) in {} ms{}",
            r.member,
            r.primary,
            r.method,
            r.rewind_error
                .as_ref()
                .map(|e| format!(": pg_rewind was impossible — {e}"))
                .unwrap_or_default(),
            r.ms,
            if r.streaming {
                "; streaming"
            } else {
                "; NOT streaming yet: see its log"
            }
        );
    }
    Ok(if r.streaming { 0 } else { 1 })
}

pub fn failback(cli: &crate::Cli, a: &FailbackArgs) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    if let Some(lifeboat_core::plan::Service::Http { .. }) = ctx.plan.services.get(&a.service) {
        return app_failback(cli, &ctx, a);
    }
    let Some(to) = a.to.clone() else {
        anyhow::bail!(
            "give the site to hand the primary back to: lifeboat failback {} --to SITE",
            a.service
        );
    };
    let w = watched(&ctx, &a.service)?;
    if !w.members.iter().any(|m| m.site == to) {
        anyhow::bail!("{} has no member {}", a.service, to);
    }
    // The plan's own failback runbook for this service, when it has one (its rejoin and
    // switchover steps without a site go to --to; LIFEBOAT_TO tells its commands).
    if let Some((name, rb)) = ctx.plan.runbooks.iter().find(|(_, rb)| {
        rb.kind.as_deref() == Some("failback") && rb.service.as_deref() == Some(&a.service)
    }) {
        let mut rb = rb.clone();
        for st in rb.steps.iter_mut() {
            if matches!(st.action.as_deref(), Some("rejoin" | "switchover")) && st.site.is_none() {
                st.site = Some(to.clone());
                if st.action.as_deref() == Some("switchover") && st.timeout.is_none() {
                    // The switchover step waits up to half its timeout for the target.
                    st.timeout = Some(lifeboat_core::units::Duration(a.timeout.std() * 2));
                }
            }
        }
        let started = Instant::now();
        let code = super::runbook::execute(
            cli,
            &ctx,
            name,
            &rb,
            false,
            vec![("LIFEBOAT_TO".to_string(), to.clone())],
        )?;
        ctx.record(
            "failback",
            &w.service,
            if code == 0 { "ok" } else { "failed" },
            started,
            serde_json::json!({"to": to, "runbook": name}),
        )?;
        return Ok(code);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    // 1. Rejoin, unless it already streams from the primary.
    let streams = w.members.iter().filter(|m| m.site != to).any(|pm| {
        rt.block_on(async {
            let s = Session::connect(pm, Duration::from_secs(3)).await?;
            Ok::<_, lifeboat_core::Error>(
                !s.in_recovery().await? && s.standby_state(&to).await? == "streaming",
            )
        })
        .unwrap_or(false)
    });
    let rejoined = if streams {
        if !cli.json {
            println!("1. rejoin: {} already streams from the primary", to);
        }
        None
    } else {
        if !cli.json {
            println!("1. rejoin {}:", to);
        }
        let r = do_rejoin(cli, &ctx, &w, &rt, &to)?;
        if !cli.json {
            print_divergence(&r);
        }
        if !r.streaming {
            anyhow::bail!("{} does not stream after rejoin: not switching over", to);
        }
        Some(r)
    };
    // 2. Switch over to it.
    if !cli.json {
        println!("2. switchover to {}:", to);
    }
    let sw = super::switchover::perform(cli, &ctx, &w, &rt, &to, a.timeout.std())?;
    let ok = sw.aborted.is_none();
    ctx.record(
        "failback",
        &w.service,
        if ok { "ok" } else { "aborted" },
        started,
        serde_json::json!({"to": to, "rejoin": rejoined, "switchover": sw}),
    )?;
    if cli.json {
        crate::output::json(&serde_json::json!({"rejoin": rejoined, "switchover": sw}));
    } else if ok {
        println!(
            "failback done: {} is the primary again; writes stopped for {} ms",
            to,
            sw.downtime_ms.unwrap_or(0)
        );
    } else {
        println!("failback ABORTED: {}", sw.aborted.unwrap_or_default());
    }
    Ok(if ok { 0 } else { 1 })
}

/// An http service goes back to its first healthy site: the daemon routes its name, so the
/// request is handed to it and its answer printed.
fn app_failback(
    cli: &crate::Cli,
    ctx: &lifeboat_context::Context,
    a: &FailbackArgs,
) -> anyhow::Result<i32> {
    if a.to.is_some() {
        anyhow::bail!(
            "{} is an http service: it goes back to the first site in its order that passes its checks (no --to)",
            a.service
        );
    }
    let control = lifeboat_failover::control::Control::new(&ctx.state_dir);
    if !control.daemon_running() {
        return Err(lifeboat_core::Error::new(
            lifeboat_core::Kind::Input,
            format!(
                "no `lifeboat serve` runs with this plan's state: nothing routes {}",
                a.service
            ),
        )
        .hint("start `lifeboat serve`; it answers the service's name")
        .into());
    }
    let req = lifeboat_failover::control::Request::new("failback", None, &ctx.actor);
    control.submit(&a.service, &req)?;
    let answer = control.wait(&a.service, &req.id, Duration::from_secs(30))?;
    if let Some(e) = answer["error"].as_str() {
        anyhow::bail!("{e}");
    }
    if cli.json {
        crate::output::json(&answer);
    } else {
        let site = answer["site"].as_str().unwrap_or("nowhere");
        match answer["from"].as_str() {
            Some(from) if from != site => println!("{}: {from} → {site}", a.service),
            _ => println!("{}: stays on {site}", a.service),
        }
        println!("  {}", answer["reason"].as_str().unwrap_or(""));
    }
    Ok(0)
}
