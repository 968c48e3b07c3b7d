//! `--trials N --seed S`: the same drill N times with the fault's timing (and, for partitions,
//! its shape) drawn from a seeded generator, so a run can be replayed; the distribution of
//! RTO, RPO and lost writes over the trials, with the seed, in one report.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use lifeboat_context::Context;
use lifeboat_core::plan::Drill;
use lifeboat_core::{Error, Kind};

use crate::measure::percentile;
use crate::run::{run, RunOpts};

/// splitmix64: small, seedable, the same sequence everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trial {
    pub n: u32,
    pub run_id: String,
    pub warmup_ms: u64,
    pub shape: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub rto_ms: Option<u64>,
    pub rpo_ms: Option<u64>,
    pub lost: u64,
    pub acknowledged: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dist {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

fn dist(xs: &[f64]) -> Dist {
    Dist {
        p50: percentile(xs, 50.0),
        p95: percentile(xs, 95.0),
        max: xs.iter().cloned().reduce(f64::max),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrialsReport {
    pub drill: String,
    pub scenario: String,
    pub service: String,
    pub seed: u64,
    pub trials: Vec<Trial>,
    pub passed: u32,
    pub rto_ms: Dist,
    pub rpo_ms: Dist,
    pub lost_total: u64,
    pub lost: Dist,
    pub host: String,
    pub started: String,
}

impl TrialsReport {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let f = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "# Drill `{}`: {} on {}, {} trials (seed {})\n",
            self.drill,
            self.scenario,
            self.service,
            self.trials.len(),
            self.seed
        );
        let _ = writeln!(
            s,
            "Replay with `lifeboat drill run {} --trials {} --seed {}`. Started {} on {}.\n",
            self.drill,
            self.trials.len(),
            self.seed,
            self.started,
            self.host
        );
        let _ = writeln!(s, "| | p50 | p95 | max |\n| --- | --- | --- | --- |");
        let _ = writeln!(
            s,
            "| RTO (ms) | {} | {} | {} |",
            f(self.rto_ms.p50),
            f(self.rto_ms.p95),
            f(self.rto_ms.max)
        );
        let _ = writeln!(
            s,
            "| RPO (ms) | {} | {} | {} |",
            f(self.rpo_ms.p50),
            f(self.rpo_ms.p95),
            f(self.rpo_ms.max)
        );
        let _ = writeln!(
            s,
            "| lost writes | {} | {} | {} |",
            f(self.lost.p50),
            f(self.lost.p95),
            f(self.lost.max)
        );
        let _ = writeln!(
            s,
            "\n{} of {} passed; {} acknowledged writes lost in all.\n",
            self.passed,
            self.trials.len(),
            self.lost_total
        );
        let _ = writeln!(
            s,
            "| # | fault after | shape | outcome | RTO ms | RPO ms | lost | acknowledged | run |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for t in &self.trials {
            let _ = writeln!(
                s,
                "| {} | {} ms | {} | {}{} | {} | {} | {} | {} | {} |",
                t.n,
                t.warmup_ms,
                t.shape.as_deref().unwrap_or("-"),
                t.outcome,
                t.reason
                    .as_ref()
                    .map(|r| format!(" ({})", r.replace('|', "/")))
                    .unwrap_or_default(),
                t.rto_ms.map(|v| v.to_string()).unwrap_or("-".into()),
                t.rpo_ms.map(|v| v.to_string()).unwrap_or("-".into()),
                t.lost,
                t.acknowledged,
                t.run_id
            );
        }
        s
    }
}

/// Run `d` `n` times. Each trial is a full drill (its own reports and evidence event); the
/// summary is written beside them and recorded too.
pub fn run_trials(
    ctx: &Context,
    name: &str,
    d: &Drill,
    o: &RunOpts,
    n: u32,
    seed: u64,
    each: &dyn Fn(&Trial),
) -> Result<(TrialsReport, Vec<(PathBuf, String)>), Error> {
    let started = Instant::now();
    let began = jiff::Timestamp::now().to_string();
    let mut rng = Rng::new(seed);
    let namespaced = match ctx.plan.services.get(&d.service) {
        Some(lifeboat_core::plan::Service::Postgres { members, .. }) => {
            !members.is_empty() && members.values().all(|m| m.netns.is_some())
        }
        _ => false,
    };
    let base = d
        .workload
        .as_ref()
        .and_then(|w| w.warmup.map(|x| x.0))
        .unwrap_or(Duration::from_secs(2));
    let mut trials = Vec::new();
    for i in 1..=n {
        if crate::run::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        // The fault lands anywhere from half to one and a half warm-ups in.
        let warmup = Duration::from_secs_f64(base.as_secs_f64() * rng.between(0.5, 1.5));
        let shape = (d.scenario == "partition-site").then(|| {
            // Sites in namespaces can also be cut off from the coordinator together.
            let n = if namespaced { 3 } else { 2 };
            ["isolate", "one-way", "coordinator"][(rng.next_u64() % n) as usize].to_string()
        });
        let mut dd = d.clone();
        let mut w = dd.workload.clone().unwrap_or_default();
        w.warmup = Some(lifeboat_core::units::Duration(warmup));
        dd.workload = Some(w);
        if shape.is_some() && d.partition.is_none() {
            dd.partition = shape.clone();
        }
        let (r, _) = run(ctx, name, &dd, o)?;
        let t = Trial {
            n: i,
            run_id: r.run_id.clone(),
            warmup_ms: warmup.as_millis() as u64,
            shape: dd.partition.clone(),
            outcome: r.outcome.clone(),
            reason: r.reason.clone(),
            rto_ms: r.measured.rto_ms,
            rpo_ms: r.measured.rpo_ms,
            lost: r.measured.writes.lost,
            acknowledged: r.measured.writes.acknowledged,
        };
        each(&t);
        trials.push(t);
    }
    let rto: Vec<f64> = trials
        .iter()
        .filter_map(|t| t.rto_ms)
        .map(|v| v as f64)
        .collect();
    let rpo: Vec<f64> = trials
        .iter()
        .filter_map(|t| t.rpo_ms)
        .map(|v| v as f64)
        .collect();
    let lost: Vec<f64> = trials.iter().map(|t| t.lost as f64).collect();
    let report = TrialsReport {
        drill: name.into(),
        scenario: d.scenario.clone(),
        service: d.service.clone(),
        seed,
        passed: trials.iter().filter(|t| t.outcome == "passed").count() as u32,
        rto_ms: dist(&rto),
        rpo_ms: dist(&rpo),
        lost_total: trials.iter().map(|t| t.lost).sum(),
        lost: dist(&lost),
        host: trials
            .first()
            .map(|_| crate::report::host_description())
            .unwrap_or_default(),
        started: began,
        trials,
    };
    let dir = o
        .report_dir
        .clone()
        .unwrap_or_else(|| ctx.state_dir.join("drill/reports"));
    let stem = format!(
        "{name}-trials-{}",
        jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
    );
    let io = |p: &PathBuf, e: std::io::Error| Error::new(Kind::Io, format!("{}: {e}", p.display()));
    let mut written = Vec::new();
    for (ext, body) in [
        ("md", report.markdown().into_bytes()),
        (
            "json",
            serde_json::to_vec_pretty(&report).unwrap_or_default(),
        ),
    ] {
        let p = dir.join(format!("{stem}.{ext}"));
        std::fs::write(&p, &body).map_err(|e| io(&p, e))?;
        written.push((p, hex::encode(Sha256::digest(&body))));
    }
    let figures = serde_json::json!({
        "drill": name, "scenario": d.scenario, "seed": seed, "trials": report.trials.len(),
        "passed": report.passed, "rto_ms": report.rto_ms, "rpo_ms": report.rpo_ms,
        "lost_total": report.lost_total,
        "reports": {
            "markdown": {"path": written[0].0.display().to_string(), "sha256": written[0].1},
            "json": {"path": written[1].0.display().to_string(), "sha256": written[1].1},
        },
    });
    let outcome =
        if report.passed as usize == report.trials.len() && report.trials.len() == n as usize {
            "passed"
        } else {
            "failed"
        };
    ctx.record("drill trials", &d.service, outcome, started, figures)
        .map_err(|e| Error::new(Kind::Io, format!("recording the trials: {e}")))?;
    Ok((report, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_faults() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut r = Rng::new(7);
        for _ in 0..1000 {
            let x = r.between(0.5, 1.5);
            assert!((0.5..1.5).contains(&x));
        }
    }
}
