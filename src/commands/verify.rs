//! `lifeboat verify [JOB] [--read-data | --read-data-subset N%]`.

#[derive(clap::Args)]
pub struct Args {
    /// Only this job.
    job: Option<String>,
    /// Read all data back: decrypt and check every blob's hash.
    #[arg(long)]
    read_data: bool,
    /// Read a subset: `10%`, `1/5` (the fifth part of five), or a size like `500MiB`.
    #[arg(long, value_name = "SUBSET")]
    read_data_subset: Option<String>,
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let r = lifeboat_engine::ops::verify(
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
