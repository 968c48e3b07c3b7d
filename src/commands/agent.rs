//! `lifeboat agent --member SITE`: the agent beside one PostgreSQL member, coordinated with the
//! other members' agents through the plan's etcd (`coordinator:`); see
//! crates/failover/src/agent.rs. It also runs the site's traffic endpoints
//! (`failover.site_listen`). Structured events (JSON lines) go to stderr; leadership,
//! promotions and fences to the evidence log.

use std::future::Future;

use lifeboat_core::Error;
use tokio::sync::watch;

#[derive(clap::Args)]
pub struct Args {
    /// The site of the member this agent runs beside (on that member's host).
    #[arg(long, value_name = "SITE")]
    pub member: String,
    /// Only this service (default: every postgres service with a member in that site).
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Do not run the site's traffic endpoints (run them with `lifeboat endpoint` instead).
    #[arg(long)]
    pub no_endpoint: bool,
}

/// Run `work` on a runtime until SIGINT/SIGTERM turns its stop signal true.
pub fn until_signal<F, Fut>(work: F) -> anyhow::Result<i32>
where
    F: FnOnce(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    // Before the runtime creates its threads, so they inherit the blocked mask.
    lifeboat_context::signals::on_termination(move || {
        let _ = stop_tx.send(true);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(work(stop_rx))?;
    Ok(0)
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    until_signal(|stop| async move {
        lifeboat_failover::agent::run(&ctx, &a.member, a.service.as_deref(), !a.no_endpoint, stop)
            .await
    })
}
