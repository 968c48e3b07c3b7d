//! `lifeboat endpoint --site SITE`: a site's traffic endpoints alone, following the leader key
//! in etcd (`failover.site_listen`; crates/failover/src/site_endpoint.rs) — for a site without
//! a PostgreSQL member, or to run them apart from the agent (`lifeboat agent --no-endpoint`).

#[derive(clap::Args)]
pub struct Args {
    /// The site whose endpoints to run (a key of `failover.site_listen`).
    #[arg(long, value_name = "SITE")]
    pub site: String,
    /// Only this service's endpoint.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    super::agent::until_signal(|stop| async move {
        lifeboat_failover::site_endpoint::run(&ctx, &a.site, a.service.as_deref(), stop).await
    })
}
