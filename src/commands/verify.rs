//! `lifeboat verify [JOB] [--read-data | --read-data-subset N%]`.

#[derive(clap::Args)]
pub struct Args {
    /// Only this job (with --restore: this service). A bucket service: compare its source and
    /// replica (both listings, and the content of a sample of objects).
    job: Option<String>,
    /// Bucket services: how many objects' contents to read from both sides and compare.
    #[arg(long, default_value_t = 20)]
    sample: usize,
    /// Read all data back: decrypt and check every blob's hash.
    #[arg(long)]
    read_data: bool,
    /// Read a subset: `10%`, `1/5` (the fifth part of five), or a size like `500MiB`.
    #[arg(long, value_name = "SUBSET")]
    read_data_subset: Option<String>,
    /// Prove postgres backups by restoring them: the latest recovery point into a sandbox on a
    /// free port, WAL replayed, the service's SQL checks run, then torn down. The positional
    /// argument is then a service name.
    #[arg(long)]
    restore: bool,
}

fn verify_restore(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let services = ctx.postgres_services(a.job.as_deref())?;
    if services.is_empty() {
        anyhow::bail!(lifeboat_core::Error::new(
            lifeboat_core::Kind::Input,
            "the plan has no postgres service to restore (--restore proves postgres services)",
        ));
    }
    lifeboat_protect::pitr::install_teardown_on_signal();
    let mut ok = true;
    let mut reports = Vec::new();
    for s in services {
        let r = lifeboat_protect::pitr::verify_restore(&ctx, &s)?;
        ok &= r.ok;
        if !cli.json {
            let secs = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
            println!(
                "{}  {s}: restore of {} into a sandbox",
                if r.ok { "ok  " } else { "FAIL" },
                if r.snapshot.is_empty() {
                    "-"
                } else {
                    &r.snapshot[..8]
                }
            );
            if let Some(e) = &r.error {
                println!("      error: {e}");
            } else {
                println!(
                    "      restore + replay until writable: {} (RTO objective {})",
                    secs(r.restore_ms),
                    r.rto_ms.map(secs).unwrap_or_else(|| "none".into())
                );
                println!(
                    "      data age at the recovery point: {} (RPO objective {})",
                    r.data_age_ms
                        .map(secs)
                        .unwrap_or_else(|| "unknown (no transaction replayed)".into()),
                    r.rpo_ms.map(secs).unwrap_or_else(|| "none".into())
                );
            }
            for c in &r.checks {
                println!(
                    "      {} {}  ({})",
                    if c.ok { "ok  " } else { "FAIL" },
                    c.sql,
                    c.detail
                );
            }
        }
        reports.push(r);
    }
    if cli.json {
        crate::output::json(&reports);
    }
    Ok(if ok { 0 } else { crate::exit::FAILED })
}

/// A bucket service: its replica compared with its source, recorded in the evidence log.
fn verify_bucket(
    cli: &crate::Cli,
    ctx: &lifeboat_context::Context,
    r: &lifeboat_protect::bucket::Replicated,
    sample: usize,
) -> anyhow::Result<i32> {
    let started = std::time::Instant::now();
    let c = lifeboat_protect::bucket::verify(r, sample);
    let figures = match &c {
        Ok(c) => serde_json::json!({
            "source_objects": c.source_objects, "replica_objects": c.replica_objects,
            "missing": c.missing.len(), "differ": c.differ.len(), "extra": c.extra.len(),
            "sampled": c.sampled, "content_differs": c.content_differs.len(),
        }),
        Err(e) => serde_json::json!({"error": e.message}),
    };
    let ok = c.as_ref().is_ok_and(|c| c.ok());
    ctx.record(
        "verify",
        &r.service,
        if ok { "passed" } else { "failed" },
        started,
        figures,
    )?;
    let c = c?;
    if cli.json {
        crate::output::json(&c);
        return Ok(if ok { 0 } else { crate::exit::FAILED });
    }
    let list = |v: &[String]| {
        let mut s = v.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
        if v.len() > 10 {
            s.push_str(&format!(" … ({} in all)", v.len()));
        }
        s
    };
    println!(
        "{}  {}: {} object(s) at the source, {} in the replica",
        if ok { "ok  " } else { "FAIL" },
        r.service,
        c.source_objects,
        c.replica_objects
    );
    if !c.missing.is_empty() {
        println!("      missing in the replica: {}", list(&c.missing));
    }
    if !c.differ.is_empty() {
        println!("      another version in the replica: {}", list(&c.differ));
    }
    if !c.extra.is_empty() {
        println!(
            "      only in the replica ({}): {}",
            match c.deletes {
                lifeboat_core::plan::Deletes::Keep => "deleted at the source, kept",
                lifeboat_core::plan::Deletes::Propagate => "should have been deleted",
            },
            list(&c.extra)
        );
    }
    println!(
        "      contents compared: {} sampled object(s), {} differ{}",
        c.sampled,
        c.content_differs.len(),
        if c.content_differs.is_empty() {
            String::new()
        } else {
            format!(": {}", list(&c.content_differs))
        }
    );
    Ok(if ok { 0 } else { crate::exit::FAILED })
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    if a.restore {
        return verify_restore(cli, a);
    }
    let ctx = super::context(cli)?;
    if let Some(r) = a
        .job
        .as_deref()
        .and_then(|j| lifeboat_protect::bucket::Replicated::from_plan(&ctx, j))
    {
        return verify_bucket(cli, &ctx, &r, a.sample);
    }
    let r = lifeboat_protect::ops::verify(
        &ctx,
        a.job.as_deref(),
        a.read_data,
        a.read_data_subset.as_deref(),
    )?;
    if cli.json {
        crate::output::json(&r);
    } else {
        for f in &r.findings {
            if f.ok {
                println!("ok    {}", f.message);
            } else {
                println!("FAIL  {}", f.message);
            }
        }
        let failed = r.findings.iter().filter(|f| !f.ok).count();
        println!("{} check(s), {failed} failed", r.findings.len());
    }
    Ok(if r.ok { 0 } else { crate::exit::FAILED })
}
