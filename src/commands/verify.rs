//! `lifeboat verify [JOB] [--read-data | --read-data-subset N%]`.

#[derive(clap::Args)]
pub struct Args {
    /// Only this job (with --restore: this service).
    job: Option<String>,
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

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    if a.restore {
        return verify_restore(cli, a);
    }
    let ctx = super::context(cli)?;
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
