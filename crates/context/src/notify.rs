//! Notifications: generic JSON webhooks and Slack-compatible payloads, routed by
//! severity (P1 critical … P4 low). Delivery never blocks the caller: events go to a
//! bounded queue that a background task drains, with a deadline per attempt and bounded retries;
//! every delivery (or giving up) is recorded in the evidence log, with the target named as the
//! plan names it (`${SLACK_WEBHOOK}`), never its URL.

use std::time::{Duration, Instant};

use lifeboat_core::plan::{Notification, NotificationFormat, Severity};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::Context;

/// One event worth telling people about.
#[derive(Clone, Debug, Serialize)]
pub struct Note {
    pub severity: Severity,
    /// `failover`, `fence`, `hold`, `switchover`, `rejoin`, …
    pub event: String,
    pub service: String,
    /// One sentence.
    pub summary: String,
    pub details: serde_json::Value,
}

/// The JSON body for a target's format.
pub fn payload(plan: &str, format: NotificationFormat, n: &Note) -> serde_json::Value {
    let time = jiff::Timestamp::now().to_string();
    match format {
        NotificationFormat::Json => serde_json::json!({
            "source": "lifeboat", "plan": plan, "time": time, "severity": n.severity,
            "event": n.event, "service": n.service, "summary": n.summary, "details": n.details,
        }),
        NotificationFormat::Slack => {
            let color = match n.severity {
                Severity::P1 => "#d00000",
                Severity::P2 => "#ff8c00",
                Severity::P3 => "#e0c000",
                _ => "#439fe0",
            };
            serde_json::json!({
                "text": format!("[{:?}] {} {}: {}", n.severity, plan, n.event, n.summary),
                "attachments": [{
                    "color": color,
                    "fields": [
                        {"title": "service", "value": n.service, "short": true},
                        {"title": "event", "value": n.event, "short": true},
                        {"title": "severity", "value": format!("{:?}", n.severity), "short": true},
                        {"title": "time", "value": time, "short": true},
                    ],
                }],
            })
        }
    }
}

/// Sends notes in the background.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Note>>,
}

impl Notifier {
    /// A notifier for the plan's targets, its worker on the current tokio runtime. With no
    /// targets, notes are dropped at once.
    pub fn start(ctx: &Context) -> (Notifier, Option<tokio::task::JoinHandle<()>>) {
        if ctx.plan.notifications.is_empty() {
            return (Notifier { tx: None }, None);
        }
        let (tx, mut rx) = mpsc::channel::<Note>(256);
        let ctx = ctx.clone();
        let worker = tokio::spawn(async move {
            let Ok(client) = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
            else {
                return;
            };
            // Each delivery on its own task: a target that hangs delays no other, nor the next
            // note.
            let mut running = tokio::task::JoinSet::new();
            while let Some(note) = rx.recv().await {
                for t in ctx.plan.notifications.iter() {
                    if note.severity <= t.min_severity.unwrap_or(Severity::P4) {
                        let (ctx, client, t, note) =
                            (ctx.clone(), client.clone(), t.clone(), note.clone());
                        running.spawn(async move { deliver(&ctx, &client, &t, &note).await });
                    }
                }
                while running.try_join_next().is_some() {}
            }
            while running.join_next().await.is_some() {}
        });
        (Notifier { tx: Some(tx) }, Some(worker))
    }

    /// Queue a note; never waits (a full queue drops it, and says so on stderr).
    pub fn send(&self, note: Note) {
        if let Some(tx) = &self.tx {
            if tx.try_send(note).is_err() {
                eprintln!("{{\"event\":\"notification_dropped\",\"reason\":\"queue full\"}}");
            }
        }
    }

    /// Stop accepting notes and let the worker finish what is queued, for at most `within`
    /// (commands call this before exiting).
    pub async fn drain(mut self, worker: Option<tokio::task::JoinHandle<()>>, within: Duration) {
        self.tx = None;
        if let Some(w) = worker {
            let abort = w.abort_handle();
            if tokio::time::timeout(within, w).await.is_err() {
                abort.abort();
            }
        }
    }
}

async fn deliver(ctx: &Context, client: &reqwest::Client, t: &Notification, n: &Note) {
    let started = Instant::now();
    let name = t.webhook.to_string();
    let body = payload(&ctx.plan.name, t.format, n);
    let timeout = t.timeout.map(|d| d.std()).unwrap_or(Duration::from_secs(5));
    let retries = t.retries.unwrap_or(2);
    let mut last_error = String::new();
    let mut attempts = 0;
    let url = match t.webhook.resolve() {
        Ok(u) => u,
        Err(e) => {
            last_error = e.to_string();
            String::new()
        }
    };
    let mut ok = false;
    if !url.is_empty() {
        for attempt in 0..=retries {
            attempts = attempt + 1;
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1).min(5))).await;
            }
            let r = tokio::time::timeout(
                timeout,
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send(),
            )
            .await;
            match r {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    ok = true;
                    break;
                }
                Ok(Ok(resp)) => last_error = format!("status {}", resp.status().as_u16()),
                // reqwest's errors carry the URL (a secret): say what happened, not where.
                Ok(Err(e)) if e.is_connect() => last_error = "connection failed".into(),
                Ok(Err(_)) => last_error = "request failed".into(),
                Err(_) => last_error = format!("no answer within {timeout:?}"),
            }
        }
    }
    let _ = ctx.record(
        "notify",
        &name,
        if ok { "ok" } else { "failed" },
        started,
        serde_json::json!({"event": n.event, "service": n.service, "severity": n.severity,
            "attempts": attempts, "error": (!ok).then_some(last_error)}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_and_json_payloads() {
        let n = Note {
            severity: Severity::P1,
            event: "failover".into(),
            service: "db".into(),
            summary: "east down, west promoted".into(),
            details: serde_json::json!({"epoch": 2}),
        };
        let s = payload("shop", NotificationFormat::Slack, &n);
        assert_eq!(s["text"], "[P1] shop failover: east down, west promoted");
        assert_eq!(s["attachments"][0]["color"], "#d00000");
        let j = payload("shop", NotificationFormat::Json, &n);
        assert_eq!(j["severity"], "P1");
        assert_eq!(j["details"]["epoch"], 2);
        assert_eq!(j["service"], "db");
    }
}
