//! `lifeboat remote …`: the on-call engineer's command line against a daemon's API from
//! anywhere — the same bearer token and roles as the dashboard, the same pre-checks and typed
//! confirmation as the local commands. `--url` (or `LIFEBOAT_API`) is the daemon's API
//! address; the token comes from `LIFEBOAT_TOKEN` or `--token-file`.

use std::path::PathBuf;
use std::time::Duration;

use lifeboat_core::{Error, Kind};

#[derive(clap::Args)]
pub struct Args {
    /// The daemon's API, e.g. `https://dr.example.com:8470`.
    #[arg(long, env = "LIFEBOAT_API")]
    url: String,
    /// A file holding the token (else `LIFEBOAT_TOKEN`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for the daemon's TLS certificate.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// A client certificate and its key in one PEM file, for a daemon that asks for one.
    #[arg(long)]
    identity: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Every service: objectives, roles, ages; open incidents.
    Status,
    /// Switch over: the primary hands over to SITE with nothing lost.
    Switchover {
        service: String,
        #[arg(long)]
        to: String,
        /// How long the target may take to catch up.
        #[arg(long, default_value = "30s")]
        timeout: String,
    },
    /// Manual failover: the pre-checks, then the typed confirmation.
    Failover(super::failover::Args),
    /// Start a job (`backup JOB`, `restore SERVICE`, `drill NAME`, `verify [JOB]`) and follow it.
    Run {
        kind: String,
        name: Option<String>,
        /// Return once it started, without following it.
        #[arg(long)]
        detach: bool,
    },
    /// Acknowledge an incident: its escalation stops.
    Ack { id: String },
    /// GET any API path (`/api/v1/...`) and print the JSON.
    Get { path: String },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    rt: tokio::runtime::Runtime,
}

impl Client {
    fn new(a: &Args) -> anyhow::Result<Client> {
        let token = match &a.token_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| Error::new(Kind::Input, format!("{}: {e}", p.display())))?,
            None => std::env::var("LIFEBOAT_TOKEN").map_err(|_| {
                Error::new(
                    Kind::Input,
                    "no API token: set LIFEBOAT_TOKEN or pass --token-file",
                )
            })?,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // The client's connector needs the runtime it will run on.
        let _on = rt.enter();
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &a.cacert {
            let pem = std::fs::read(ca)?;
            b =
                b.add_root_certificate(reqwest::Certificate::from_pem(&pem).map_err(|e| {
                    Error::new(Kind::Input, format!("--cacert {}: {e}", ca.display()))
                })?);
        }
        if let Some(id) = &a.identity {
            let pem = std::fs::read(id)?;
            b = b.identity(reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::new(Kind::Input, format!("--identity {}: {e}", id.display()))
            })?);
        }
        let http = b.build()?;
        drop(_on);
        Ok(Client {
            http,
            base: a.url.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            rt,
        })
    }

    /// One request: the JSON answer, or the API's error with its hint.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let mut r = match method {
            "POST" => self.http.post(&url),
            _ => self.http.get(&url),
        }
        .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = self.rt.block_on(async { r.send().await }).map_err(|e| {
            Error::new(
                Kind::Backend,
                format!(
                    "the daemon's API at {}: {}",
                    self.base,
                    if e.is_connect() {
                        "connection failed".to_string()
                    } else if e.is_timeout() {
                        "no answer within 30 s".into()
                    } else {
                        "request failed".into()
                    }
                ),
            )
            .hint("is `lifeboat serve` running with `api:` there, and is the address right?")
        })?;
        let status = resp.status().as_u16();
        let text = self.rt.block_on(resp.text()).unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        if status >= 400 {
            let kind = match status {
                401 | 403 => Kind::Key,
                409 => Kind::Conflict,
                400 | 404 | 413 => Kind::Input,
                _ => Kind::Source,
            };
            let mut e = Error::new(
                kind,
                format!(
                    "{status}: {}",
                    v["error"].as_str().unwrap_or("the API refused")
                ),
            );
            if let Some(h) = v["hint"].as_str() {
                e = e.hint(h);
            }
            return Err(e.into());
        }
        Ok(v)
    }

    /// Follow a job until it ends: its final record.
    fn follow(&self, job: &serde_json::Value, quiet: bool) -> anyhow::Result<serde_json::Value> {
        let id = job["id"].as_str().unwrap_or_default().to_string();
        let mut last = String::new();
        loop {
            let j = self.call("GET", &format!("/api/v1/jobs/{id}"), None)?;
            if !matches!(j["state"].as_str(), Some("running" | "cancelling")) {
                return Ok(j);
            }
            if !quiet {
                if let Some(p) = j["progress"].as_object() {
                    let line = format!(
                        "  {} {}/{}",
                        p.get("step").and_then(|v| v.as_str()).unwrap_or(""),
                        p.get("done").and_then(|v| v.as_u64()).unwrap_or(0),
                        p.get("total").and_then(|v| v.as_u64()).unwrap_or(0)
                    );
                    if line != last {
                        println!("{line}");
                        last = line;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn ended(cli: &crate::Cli, j: &serde_json::Value) -> anyhow::Result<i32> {
    if cli.json {
        crate::output::json(j);
    } else {
        println!(
            "{} {}: {}{}",
            j["id"].as_str().unwrap_or("?"),
            j["command"].as_str().unwrap_or("?"),
            j["state"].as_str().unwrap_or("?"),
            j["error"]
                .as_str()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        );
    }
    Ok(if j["state"] == "succeeded" { 0 } else { 1 })
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let c = Client::new(a)?;
    match &a.cmd {
        Cmd::Status => {
            let st = c.call("GET", "/api/v1/status", None)?;
            if cli.json {
                crate::output::json(&st);
                return Ok(0);
            }
            println!(
                "plan {} (daemon up since {})",
                st["plan"].as_str().unwrap_or("?"),
                st["daemon_started"].as_str().unwrap_or("?")
            );
            for s in st["services"].as_array().into_iter().flatten() {
                println!(
                    "service {} ({}, tier {}): RPO {}{}",
                    s["name"].as_str().unwrap_or("?"),
                    s["kind"].as_str().unwrap_or("?"),
                    s["tier"].as_str().unwrap_or("?"),
                    s["rpo"].as_str().unwrap_or("?"),
                    s["primary"]
                        .as_str()
                        .map(|p| format!(", primary {p}, epoch {}", s["epoch"]))
                        .unwrap_or_default()
                );
                for m in s["members"].as_array().into_iter().flatten() {
                    let role = if m["healthy"] != true {
                        format!("DOWN ({})", m["failure"].as_str().unwrap_or("?"))
                    } else if m["routed_primary"] == true {
                        "primary, takes writes".into()
                    } else {
                        m["role"].as_str().unwrap_or("up").to_string()
                    };
                    println!("  {:<10} {role}", m["site"].as_str().unwrap_or("?"));
                }
            }
            for i in st["incidents"].as_array().into_iter().flatten() {
                println!(
                    "incident {} {} {}: {}",
                    i["id"].as_str().unwrap_or("?"),
                    i["severity"].as_str().unwrap_or("?"),
                    i["state"].as_str().unwrap_or("?").to_uppercase(),
                    i["title"].as_str().unwrap_or("?")
                );
            }
            Ok(0)
        }
        Cmd::Switchover {
            service,
            to,
            timeout,
        } => {
            let j = c.call(
                "POST",
                &format!("/api/v1/services/{service}/switchover"),
                Some(serde_json::json!({"to": to, "confirm": service, "catch_up": timeout})),
            )?;
            if !cli.json {
                println!(
                    "switchover of {service} to {to}: started as job {}",
                    j["id"].as_str().unwrap_or("?")
                );
            }
            ended(cli, &c.follow(&j, cli.json)?)
        }
        Cmd::Failover(super::failover::Args {
            service,
            to,
            dry_run,
            force,
            accept_data_loss,
            yes,
        }) => {
            let path = format!("/api/v1/services/{service}/failover");
            let mut body =
                serde_json::json!({"to": to, "force": force, "accept_data_loss": accept_data_loss});
            let mut dry = body.clone();
            dry["dry_run"] = serde_json::json!(true);
            let plan = c.call("POST", &path, Some(dry))?;
            if !cli.json || *dry_run {
                if cli.json {
                    crate::output::json(&plan);
                } else {
                    for ch in plan["checks"].as_array().into_iter().flatten() {
                        println!(
                            "  [{:<4}] {}",
                            ch["level"].as_str().unwrap_or("?"),
                            ch["what"].as_str().unwrap_or("")
                        );
                    }
                    println!(
                        "decision: {}",
                        plan["decision"]["reason"].as_str().unwrap_or("?")
                    );
                }
            }
            if *dry_run {
                return Ok(if plan["decision"]["action"]["action"] == "failover" {
                    0
                } else {
                    1
                });
            }
            if !yes {
                let line = super::failover::typed(&format!(
                    "Type the service name ({service}) to fail over: "
                ))?;
                body["confirm"] = serde_json::json!(line);
            } else {
                body["confirm"] = serde_json::json!(service);
            }
            let j = c.call("POST", &path, Some(body))?;
            ended(cli, &c.follow(&j, cli.json)?)
        }
        Cmd::Run { kind, name, detach } => {
            let field = match kind.as_str() {
                "backup" => "job",
                "verify" => "job",
                "restore" => "service",
                "drill" => "drill",
                _ => "name",
            };
            let mut body = serde_json::json!({"kind": kind});
            if let Some(n) = name {
                body[field] = serde_json::json!(n);
            }
            let j = c.call("POST", "/api/v1/jobs", Some(body))?;
            if *detach {
                if cli.json {
                    crate::output::json(&j);
                } else {
                    println!(
                        "{} started: {}",
                        j["id"].as_str().unwrap_or("?"),
                        j["command"].as_str().unwrap_or("?")
                    );
                }
                return Ok(0);
            }
            ended(cli, &c.follow(&j, cli.json)?)
        }
        Cmd::Ack { id } => {
            let i = c.call("POST", &format!("/api/v1/incidents/{id}/ack"), None)?;
            if cli.json {
                crate::output::json(&i);
            } else {
                println!(
                    "{} {}: acknowledged by {}",
                    i["id"].as_str().unwrap_or("?"),
                    i["title"].as_str().unwrap_or(""),
                    i["acknowledged_by"].as_str().unwrap_or("?")
                );
            }
            Ok(0)
        }
        Cmd::Get { path } => {
            let v = c.call("GET", path, None)?;
            crate::output::json(&v);
            Ok(0)
        }
    }
}
