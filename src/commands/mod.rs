//! One file per subcommand.

pub mod agent;
pub mod api;
pub mod audit;
pub mod backup;
pub mod demo;
pub mod drill;
pub mod endpoint;
pub mod failover;
pub mod forget;
pub mod incident;
pub mod init;
pub mod lab;
pub mod plan;
pub mod rejoin;
pub mod remote;
pub mod repo;
pub mod restore;
pub mod runbook;
pub mod schedule;
pub mod serve;
pub mod snapshots;
pub mod status;
pub mod switchover;
pub mod verify;
pub mod wal;

use lifeboat_context::Context;

/// Load the plan named by `--plan`.
pub fn context(cli: &crate::Cli) -> anyhow::Result<Context> {
    let ctx = Context::load(&cli.plan)?;
    // Members in network namespaces (a lab built by root): every command works as the state
    // directory's owner and keeps root to start them in their namespaces.
    if lifeboat_context::identity::namespaced(&ctx.plan) {
        lifeboat_context::identity::become_state_owner(&ctx)?;
    }
    Ok(ctx)
}

/// Notifications from a command that runs without the daemon (a manual failover, a switchover,
/// a rejoin): deliveries run in the background on the command's runtime while its work goes on,
/// and `finish` waits for them a bounded time before the command exits, so a hanging endpoint
/// delays the exit, never the work. (With a daemon, the daemon notifies.)
pub struct Notes {
    notifier: lifeboat_context::notify::Notifier,
    worker: Option<tokio::task::JoinHandle<()>>,
    service: String,
}

impl Notes {
    pub fn start(ctx: &Context, rt: &tokio::runtime::Runtime, service: &str) -> Notes {
        let _in_rt = rt.enter();
        let (notifier, worker) = lifeboat_context::notify::Notifier::start(ctx);
        Notes {
            notifier,
            worker,
            service: service.to_string(),
        }
    }

    pub fn send(
        &self,
        severity: lifeboat_core::plan::Severity,
        event: &str,
        summary: String,
        details: serde_json::Value,
    ) {
        self.notifier.send(lifeboat_context::notify::Note {
            severity,
            event: event.to_string(),
            service: self.service.clone(),
            summary,
            details,
            only: None,
        });
    }

    /// Wait for queued deliveries (their retries included) for at most 30 s.
    pub fn finish(self, rt: &tokio::runtime::Runtime) {
        rt.block_on(
            self.notifier
                .drain(self.worker, std::time::Duration::from_secs(30)),
        );
    }
}
