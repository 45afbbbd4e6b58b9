//! A rollout rehearsal: a scenario with a `[rollout]` run over several seeds, summarised per
//! ring as an admin reads it (when each ring starts and finishes, p50/p90 over seeds), with the
//! halt and blast radius when the patch fails somewhere. `patchmesh rollout plan` builds the
//! scenario from a live node's view of the fleet; `patchmesh-sim plan FILE` rehearses any
//! scenario file, such as one it exported.

use crate::{run, Report, Scenario};
use serde::{Deserialize, Serialize};

/// One ring's prediction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RingPlan {
    /// Ring name.
    pub name: String,
    /// Targeted members (p50 over seeds).
    pub nodes: u64,
    /// From the rollout's creation to its first install start: p50, p90 (ms).
    pub start_ms: Option<[u64; 2]>,
    /// From creation to its last member committed: p50, p90 (ms); None when it did not
    /// finish within the horizon on most seeds.
    pub done_ms: Option<[u64; 2]>,
    /// `done_ms` p50 as local time in the admin's zone.
    pub done_at: Option<String>,
    /// Seeds on which the ring finished.
    pub finished_seeds: u32,
}

/// What the rehearsal predicts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rehearsal {
    /// Seeds run.
    pub seeds: u32,
    /// Simulated time after the rollout's creation.
    pub horizon_ms: u64,
    /// Targeted nodes (p50 over seeds).
    pub targeted_nodes: u64,
    /// Per ring.
    pub rings: Vec<RingPlan>,
    /// Creation to every targeted node committed: p50, p90 (ms), when most seeds got there.
    pub complete_ms: Option<[u64; 2]>,
    /// Creation to the halt (ms): p50, p90 over the seeds that halted.
    pub halt_ms: Option<[u64; 2]>,
    /// Seeds on which the rollout halted.
    pub halted_seeds: u32,
    /// Nodes outside the halting ring that installed before the halt (max over seeds).
    pub blast_radius_max: u64,
    /// Nodes rolled back (p50 over seeds).
    pub rolled_back: u64,
    /// Simulator invariant violations (none expected; any is a bug to report).
    pub violations: Vec<String>,
}

/// Runs every seed, on as many threads as the machine has cores; reports in seed order.
pub fn run_seeds(s: &Scenario, seeds: &[u64]) -> Vec<Report> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(seeds.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(seed) = seeds.get(i) else { break };
                let r = run(s, *seed);
                done.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
            });
        }
    });
    let mut v = done.into_inner().unwrap_or_else(|e| e.into_inner());
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, r)| r).collect()
}

fn percentile(mut v: Vec<u64>, p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[((v.len() - 1) as f64 * p).round() as usize])
}

fn pair(v: Vec<u64>) -> Option<[u64; 2]> {
    Some([percentile(v.clone(), 0.5)?, percentile(v, 0.9)?])
}

/// Rehearses `s` (which must have a `[rollout]`) over `seeds`; local times are in `tz`.
pub fn rehearse(s: &Scenario, seeds: &[u64], tz: &jiff::tz::TimeZone) -> Rehearsal {
    let reports = run_seeds(s, seeds);
    let n = seeds.len() as u32;
    let at = s.rollout.as_ref().map_or(0, |r| r.at_ms);
    let names: Vec<String> = s
        .rollout
        .as_ref()
        .map(|r| r.rings.iter().map(|g| g.name.clone()).collect())
        .unwrap_or_default();
    let figs: Vec<_> = reports.iter().filter_map(|r| r.rollout.as_ref()).collect();
    let local = |since_at: u64| {
        jiff::Timestamp::from_millisecond((s.epoch_ms + at + since_at) as i64)
            .map(|ts| ts.to_zoned(tz.clone()).strftime("%a %Y-%m-%d %H:%M %Z").to_string())
            .ok()
    };
    let rings = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let since =
                |v: &[Option<u64>]| v.get(i).copied().flatten().map(|ms| ms.saturating_sub(at));
            let starts: Vec<u64> = figs.iter().filter_map(|f| since(&f.ring_start_ms)).collect();
            let dones: Vec<u64> = figs.iter().filter_map(|f| since(&f.ring_done_ms)).collect();
            let finished = dones.len() as u32;
            let done_ms = (finished * 2 > n).then(|| pair(dones)).flatten();
            RingPlan {
                name: name.clone(),
                nodes: percentile(
                    figs.iter()
                        .map(|f| f.ring_targeted_nodes.get(i).copied().unwrap_or(0) as u64)
                        .collect(),
                    0.5,
                )
                .unwrap_or(0),
                start_ms: pair(starts),
                done_at: done_ms.and_then(|d| local(d[0])),
                done_ms,
                finished_seeds: finished,
            }
        })
        .collect();
    let halts: Vec<u64> =
        figs.iter().filter_map(|f| f.halt_threshold_ms).map(|ms| ms.saturating_sub(at)).collect();
    let completes: Vec<u64> = figs.iter().filter_map(|f| f.rollout_complete_ms).collect();
    Rehearsal {
        seeds: n,
        horizon_ms: s.duration_ms.saturating_sub(at),
        targeted_nodes: percentile(
            figs.iter().map(|f| f.rollout_targeted_nodes as u64).collect(),
            0.5,
        )
        .unwrap_or(0),
        rings,
        complete_ms: (completes.len() as u32 * 2 > n).then(|| pair(completes)).flatten(),
        halted_seeds: halts.len() as u32,
        halt_ms: pair(halts),
        blast_radius_max: figs.iter().map(|f| f.blast_radius).max().unwrap_or(0),
        rolled_back: percentile(figs.iter().map(|f| f.rolled_back_nodes as u64).collect(), 0.5)
            .unwrap_or(0),
        violations: reports.iter().flat_map(|r| r.invariant_violations.iter().cloned()).collect(),
    }
}

/// A duration for people: 850 ms, 42.0 s, 12 min, 3.5 h, 2.1 d.
pub fn span(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{:.1} s", ms as f64 / 1e3),
        120_000..7_200_000 => format!("{:.0} min", ms as f64 / 6e4),
        7_200_000..172_800_000 => format!("{:.1} h", ms as f64 / 3.6e6),
        _ => format!("{:.1} d", ms as f64 / 8.64e7),
    }
}

impl Rehearsal {
    /// The ring table.
    pub fn ring_lines(&self) -> Vec<String> {
        let two = |v: Option<[u64; 2]>| {
            v.map_or("-".to_string(), |[a, b]| format!("{} / {}", span(a), span(b)))
        };
        let mut out = vec![format!(
            "{:<10} {:>6}  {:<22} {:<22} {}",
            "RING", "NODES", "STARTS (p50/p90)", "DONE (p50/p90)", "DONE AT (p50)"
        )];
        for r in &self.rings {
            let done = match r.done_ms {
                Some(_) => two(r.done_ms),
                None if r.finished_seeds == 0 => "not within horizon".into(),
                None => format!("{} of {} seeds", r.finished_seeds, self.seeds),
            };
            out.push(format!(
                "{:<10} {:>6}  {:<22} {:<22} {}",
                r.name,
                r.nodes,
                two(r.start_ms),
                done,
                r.done_at.as_deref().unwrap_or("-")
            ));
        }
        out
    }

    /// How the rollout ends: complete, unfinished, or halted.
    pub fn outcome_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self.complete_ms {
            Some([a, b]) => out.push(format!(
                "every targeted node committed after {} (p50), {} (p90)",
                span(a),
                span(b)
            )),
            None if self.halted_seeds == 0 => out.push(format!(
                "the rollout does not finish within the horizon ({}) on most seeds",
                span(self.horizon_ms)
            )),
            None => {}
        }
        if let Some([a, b]) = self.halt_ms {
            out.push(format!(
                "halted on {} of {} seeds, {} after creation (p50; p90 {}); blast radius {} \
                 nodes outside the halting ring (max), {} rolled back (p50)",
                self.halted_seeds,
                self.seeds,
                span(a),
                span(b),
                self.blast_radius_max,
                self.rolled_back
            ));
        }
        out
    }
}
