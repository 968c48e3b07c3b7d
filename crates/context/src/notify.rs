//! Notifications: generic JSON webhooks, Slack-compatible and status-page payloads, and
//! e-mail over SMTP, routed by severity (P1 critical … P4 low) and by kind of event.
//! Delivery never blocks the caller: events go to a
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
    /// Only these targets (by name), whatever their severity and event filters: an
    /// escalation level's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<String>>,
}

/// The JSON body for a target's format.
pub fn payload(plan: &str, format: NotificationFormat, n: &Note) -> serde_json::Value {
    let time = jiff::Timestamp::now().to_string();
    match format {
        NotificationFormat::Json => serde_json::json!({
            "source": "lifeboat", "plan": plan, "time": time, "severity": n.severity,
            "event": n.event, "service": n.service, "summary": n.summary, "details": n.details,
        }),
        NotificationFormat::Statuspage => {
            // A status page's incident (Statuspage's shape): resolved notes close it.
            let status = match n.event.as_str() {
                "resolved" => "resolved",
                "failover" | "switchover" | "rejoin" => "monitoring",
                "acknowledged" => "identified",
                _ => "investigating",
            };
            let impact = match n.severity {
                Severity::P1 => "critical",
                Severity::P2 => "major",
                Severity::P3 => "minor",
                Severity::P4 => "none",
            };
            serde_json::json!({"incident": {
                "name": format!("{}: {}", n.service, n.summary),
                "status": status,
                "impact_override": impact,
                "body": format!("{} ({}, {:?}) at {time}", n.summary, n.event, n.severity),
                "metadata": {"lifeboat": {"plan": plan, "service": n.service, "event": n.event}},
            }})
        }
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

/// Whether target `t` (named `name`) gets `note`: a note addressed to targets by name (an
/// escalation level) goes to those only; any other by severity and kind of event.
pub fn routed(t: &Notification, name: &str, note: &Note) -> bool {
    if let Some(only) = &note.only {
        return only.iter().any(|o| o == name);
    }
    note.severity <= t.min_severity.unwrap_or(Severity::P4)
        && t.events
            .as_ref()
            .is_none_or(|ev| ev.iter().any(|e| e == &note.event))
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
                for (i, t) in ctx.plan.notifications.iter().enumerate() {
                    let name = t.name_at(i);
                    if routed(t, &name, &note) {
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
    let name = t
        .name
        .clone()
        .unwrap_or_else(|| match (&t.webhook, &t.email) {
            (Some(w), _) => w.to_string(),
            (None, Some(e)) => format!("email {}", e.to.join(",")),
            _ => "?".into(),
        });
    let retries = t.retries.unwrap_or(2);
    let mut last_error = String::new();
    let mut attempts = 0;
    let mut ok = false;
    match (&t.webhook, &t.email) {
        (Some(hook), _) => {
            let body = payload(&ctx.plan.name, t.format, n);
            let timeout = t.timeout.map(|d| d.std()).unwrap_or(Duration::from_secs(5));
            let url = match hook.resolve() {
                Ok(u) => u,
                Err(e) => {
                    last_error = e.to_string();
                    String::new()
                }
            };
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
        }
        (None, Some(e)) => {
            let timeout = t
                .timeout
                .map(|d| d.std())
                .unwrap_or(Duration::from_secs(15));
            for attempt in 0..=retries {
                attempts = attempt + 1;
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_secs(1 << (attempt - 1).min(5))).await;
                }
                match tokio::time::timeout(timeout, email(&ctx.plan.name, e, n, timeout)).await {
                    Ok(Ok(())) => {
                        ok = true;
                        break;
                    }
                    Ok(Err(why)) => last_error = why,
                    Err(_) => {
                        last_error = format!("the SMTP server did not finish within {timeout:?}")
                    }
                }
                if last_error.starts_with("not sendable") {
                    break; // the message itself is wrong: trying again cannot help
                }
            }
        }
        _ => last_error = "neither webhook nor email".into(),
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

/// The subject and text of a note's e-mail.
pub fn email_text(plan: &str, n: &Note) -> (String, String) {
    let subject = format!("[{:?}] {plan} {}: {}", n.severity, n.event, n.summary);
    let mut body = format!(
        "{}\n\nplan: {plan}\nservice: {}\nevent: {}\nseverity: {:?}\ntime: {}\n",
        n.summary,
        n.service,
        n.event,
        n.severity,
        jiff::Timestamp::now()
    );
    if let Some(id) = n.details["incident"].as_str() {
        body.push_str(&format!(
            "\nAcknowledge it (stops the escalation): lifeboat ack {id}\nIts report: lifeboat incident report {id}\n"
        ));
    }
    if !n.details.is_null() {
        body.push_str("\ndetails:\n");
        body.push_str(&serde_json::to_string_pretty(&n.details).unwrap_or_default());
        body.push('\n');
    }
    // One line never exceeds what SMTP allows.
    (subject.chars().take(200).collect(), body)
}

async fn email(
    plan: &str,
    e: &lifeboat_core::plan::EmailSpec,
    n: &Note,
    timeout: Duration,
) -> Result<(), String> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let (subject, body) = email_text(plan, n);
    let mut m = Message::builder()
        .from(
            e.from
                .parse()
                .map_err(|x| format!("not sendable: from: {x}"))?,
        )
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &e.to {
        m = m.to(to
            .parse()
            .map_err(|x| format!("not sendable: to {to}: {x}"))?);
    }
    let msg = m.body(body).map_err(|x| format!("not sendable: {x}"))?;
    let (host, port) = e
        .smtp
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("not sendable: smtp `{}` is not host:port", e.smtp))?;
    let builder = match e.tls.as_deref().unwrap_or("starttls") {
        "none" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str()),
        "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&host).map_err(|x| x.to_string())?,
        _ => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
            .map_err(|x| x.to_string())?,
    };
    let mut builder = builder.port(port).timeout(Some(timeout));
    if let Some(u) = &e.user {
        let pw = match &e.password {
            Some(p) => p.resolve().map_err(|x| x.to_string())?,
            None => String::new(),
        };
        builder = builder.credentials(Credentials::new(u.clone(), pw));
    }
    // lettre's errors name the server and what it said, never the password.
    builder
        .build()
        .send(msg)
        .await
        .map(|_| ())
        .map_err(|x| format!("SMTP {}: {x}", e.smtp))
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
            only: None,
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
