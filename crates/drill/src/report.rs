//! A drill's report: JSON for machines, Markdown for the plan's document, and a self-contained
//! HTML page (no external assets) with the writes over time, the fault and the recovery marked.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use lifeboat_core::{Error, Kind};

use crate::measure::{Attempt, Writes};

/// One objective, target and measured side by side.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Objective {
    /// `RPO`, `RTO`, `lost writes`, `restore checks`.
    pub name: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// One part of the recovery time, from the daemon's own record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Part {
    pub name: String,
    pub ms: u64,
    pub detail: String,
}

/// A steady-state check's runs in one phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SteadyResult {
    pub name: String,
    pub phase: String,
    pub runs: u32,
    pub failures: u32,
    pub passed: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Measured {
    /// Last acknowledged write before the fault → first acknowledged write after it (or,
    /// for restores, the fault → the restored server taking writes).
    pub rto_ms: Option<u64>,
    pub rpo_ms: Option<u64>,
    pub rpo_bytes: Option<u64>,
    pub writes: Writes,
    pub parts: Vec<Part>,
    /// The RTO each kind of client saw, when the writers took more than one path (the RTO
    /// above is the longest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathRto>,
}

/// One path's outage: how clients that reach the service that way saw the recovery.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PathRto {
    /// `endpoint` or `dns`.
    pub via: String,
    /// Where it goes, in words (the endpoint's address; the DNS name, server and TTL).
    pub detail: String,
    pub rto_ms: Option<u64>,
    pub acknowledged: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub drill: String,
    pub scenario: String,
    pub service: String,
    pub tier: String,
    pub plan: String,
    pub run_id: String,
    pub started: String,
    pub duration_ms: u64,
    /// `passed`, `failed` (an objective breached), `aborted` (a guardrail or the steady
    /// state before the fault), `interrupted` (Ctrl-C), `error`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `sync` or `async` replication (or empty).
    pub replication: String,
    pub primary_before: Option<String>,
    pub primary_after: Option<String>,
    pub fault: Option<String>,
    pub fault_at_ms: Option<f64>,
    pub recovered_at_ms: Option<f64>,
    pub measured: Measured,
    pub objectives: Vec<Objective>,
    pub steady_state: Vec<SteadyResult>,
    /// What was done afterwards: faults healed, the old primary rejoined, teardown commands.
    pub after: Vec<String>,
    pub host: String,
    /// Every write attempt (the evidence for the write counts).
    pub attempts: Vec<Attempt>,
    /// The ids the recovered server holds, with how many rows carry each: with `attempts`,
    /// anyone can count the writes again.
    pub held: Vec<(u64, u64)>,
}

/// Where a report was written, with each file's SHA-256.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Written {
    pub json: (PathBuf, String),
    pub markdown: (PathBuf, String),
    pub html: (PathBuf, String),
}

pub fn sha256_file(p: &Path) -> Result<String, Error> {
    let bytes =
        std::fs::read(p).map_err(|e| Error::new(Kind::Io, format!("{}: {e}", p.display())))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

fn ms(v: Option<u64>) -> String {
    match v {
        Some(ms) if ms < 10_000 => format!("{ms} ms"),
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
        None => "not measured".into(),
    }
}

impl Report {
    pub fn rto(&self) -> String {
        ms(self.measured.rto_ms)
    }
    pub fn rpo(&self) -> String {
        let t = ms(self.measured.rpo_ms);
        match self.measured.rpo_bytes {
            Some(b) => format!("{t} ({b} bytes)"),
            None => t,
        }
    }

    /// Markdown: the objectives table in the shape DR plans use (Objective, Target, Actual,
    /// Test date), then the details.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let date = self.started.get(..10).unwrap_or(&self.started);
        let _ = writeln!(
            s,
            "# Drill `{}`: {} on {} — {}\n",
            self.drill,
            self.scenario,
            self.service,
            self.outcome.to_uppercase()
        );
        if let Some(r) = &self.reason {
            let _ = writeln!(s, "> {r}\n");
        }
        let _ = writeln!(
            s,
            "Plan `{}`, tier `{}`, {} replication; started {} on {}; run `{}`.\n",
            self.plan,
            self.tier,
            if self.replication.is_empty() {
                "no"
            } else {
                &self.replication
            },
            self.started,
            self.host,
            self.run_id
        );
        let _ = writeln!(s, "| Objective | Target | Actual | Met | Test date |");
        let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
        for o in &self.objectives {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {date} |",
                o.name,
                o.target,
                o.measured,
                if o.met { "yes" } else { "**NO**" }
            );
        }
        let w = &self.measured.writes;
        let _ = writeln!(s, "\n## What happened\n");
        if let Some(f) = &self.fault {
            let _ = writeln!(
                s,
                "- fault: {f} at {:.0} ms",
                self.fault_at_ms.unwrap_or(0.0)
            );
        }
        let _ = writeln!(
            s,
            "- primary before: {}; after: {}",
            self.primary_before.as_deref().unwrap_or("unknown"),
            self.primary_after.as_deref().unwrap_or("unknown")
        );
        if let Some(r) = self.recovered_at_ms {
            let _ = writeln!(s, "- first acknowledged write after the fault: {r:.0} ms");
        }
        let _ = writeln!(s, "- RTO {}; RPO {}", self.rto(), self.rpo());
        for p in &self.measured.parts {
            let _ = writeln!(s, "  - {}: {} ms ({})", p.name, p.ms, p.detail);
        }
        for p in &self.measured.paths {
            let _ = writeln!(
                s,
                "- through the {} ({}): RTO {}, {} writes acknowledged",
                if p.via == "dns" {
                    "DNS name"
                } else {
                    "endpoint"
                },
                p.detail,
                p.rto_ms
                    .map(|r| format!("{r} ms"))
                    .unwrap_or_else(|| "not recovered".into()),
                p.acknowledged
            );
        }
        let _ = writeln!(
            s,
            "- writes: {} attempted, {} acknowledged, {} failed, {} unknown; **{} lost**, {} recovered, {} unexpected, {} duplicated",
            w.attempted, w.acknowledged, w.failed, w.unknown, w.lost, w.recovered, w.unexpected, w.duplicated
        );
        if !w.lost_ids.is_empty() {
            let ids: Vec<String> = w.lost_ids.iter().map(|i| i.to_string()).collect();
            let _ = writeln!(s, "  - lost ids (first {}): {}", ids.len(), ids.join(", "));
        }
        if !self.steady_state.is_empty() {
            let _ = writeln!(s, "\n## Steady state\n");
            let _ = writeln!(s, "| Check | Phase | Runs | Failures | Passed |");
            let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
            for c in &self.steady_state {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    c.name.replace('|', "\\|"),
                    c.phase,
                    c.runs,
                    c.failures,
                    if c.passed { "yes" } else { "**NO**" }
                );
            }
        }
        if !self.after.is_empty() {
            let _ = writeln!(s, "\n## Afterwards\n");
            for a in &self.after {
                let _ = writeln!(s, "- {a}");
            }
        }
        s
    }

    /// A self-contained HTML page with an inline SVG chart.
    pub fn html(&self) -> String {
        let esc = |t: &str| {
            t.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let buckets = crate::measure::per_bucket(&self.attempts, 100.0);
        let (w, h) = (900.0f64, 220.0f64);
        let n = buckets.len().max(1) as f64;
        let top = buckets.iter().map(|(a, f)| a + f).max().unwrap_or(1).max(1) as f64;
        let bw = w / n;
        let mut svg = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{}' role='img' aria-label='writes per 100 ms'>",
            h + 30.0
        );
        for (i, (ok, bad)) in buckets.iter().enumerate() {
            let x = i as f64 * bw;
            let hok = *ok as f64 / top * h;
            let hbad = *bad as f64 / top * h;
            let _ = write!(
                svg,
                "<rect x='{x:.1}' y='{:.1}' width='{:.1}' height='{hok:.1}' fill='#2b8a3e'/>",
                h - hok,
                bw.max(1.0)
            );
            if *bad > 0 {
                let _ = write!(
                    svg,
                    "<rect x='{x:.1}' y='{:.1}' width='{:.1}' height='{hbad:.1}' fill='#c92a2a'/>",
                    h - hok - hbad,
                    bw.max(1.0)
                );
            }
        }
        let mark = |svg: &mut String, at: Option<f64>, color: &str, label: &str| {
            if let Some(t) = at {
                let x = t / 100.0 * bw;
                let _ = write!(
                    svg,
                    "<line x1='{x:.1}' y1='0' x2='{x:.1}' y2='{h}' stroke='{color}' stroke-width='2'/><text x='{:.1}' y='{}' font-size='12' fill='{color}'>{label}</text>",
                    x + 3.0,
                    h + 20.0
                );
            }
        };
        mark(&mut svg, self.fault_at_ms, "#e8590c", "fault");
        mark(
            &mut svg,
            self.recovered_at_ms,
            "#1971c2",
            "first write after",
        );
        svg.push_str("</svg>");
        let mut rows = String::new();
        for o in &self.objectives {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class='{}'>{}</td></tr>",
                esc(&o.name),
                esc(&o.target),
                esc(&o.measured),
                if o.met { "ok" } else { "bad" },
                if o.met { "met" } else { "BREACHED" }
            );
        }
        format!(
            "<!doctype html><html><head><meta charset='utf-8'><title>Drill {drill}: {outcome}</title>\
             <style>body{{font-family:sans-serif;margin:2em;max-width:960px}}table{{border-collapse:collapse}}\
             td,th{{border:1px solid #ccc;padding:4px 10px}}.ok{{color:#2b8a3e}}.bad{{color:#c92a2a;font-weight:bold}}\
             pre{{background:#f6f6f6;padding:1em;white-space:pre-wrap}}</style></head><body>\
             <h1>Drill <code>{drill}</code>: {scenario} on {service} — {outcome}</h1>\
             <table><tr><th>Objective</th><th>Target</th><th>Measured</th><th></th></tr>{rows}</table>\
             <h2>Writes per 100 ms</h2><p>green: acknowledged, red: failed or unknown</p>{svg}\
             <h2>Details</h2><pre>{md}</pre></body></html>",
            drill = esc(&self.drill),
            scenario = esc(&self.scenario),
            service = esc(&self.service),
            outcome = esc(&self.outcome.to_uppercase()),
            md = esc(&self.markdown()),
        )
    }

    /// Write the three files into `dir` (named by the run id).
    pub fn write(&self, dir: &Path) -> Result<Written, Error> {
        let io =
            |p: &Path, e: std::io::Error| Error::new(Kind::Io, format!("{}: {e}", p.display()));
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let base = dir.join(format!("{}-{}", self.drill, self.run_id));
        let put = |ext: &str, body: &[u8]| -> Result<(PathBuf, String), Error> {
            let p = base.with_extension(ext);
            std::fs::write(&p, body).map_err(|e| io(&p, e))?;
            Ok((p.clone(), hex::encode(Sha256::digest(body))))
        };
        Ok(Written {
            json: put("json", &serde_json::to_vec_pretty(self).unwrap_or_default())?,
            markdown: put("md", self.markdown().as_bytes())?,
            html: put("html", self.html().as_bytes())?,
        })
    }
}

/// The machine a drill ran on: its name and cores.
pub fn host_description() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "this host".into());
    format!("{name} ({cores} cores)")
}
