//! `patchmesh-sim run SCENARIO --seed N`: one JSON report on stdout; exit 1 on a violation.

use anyhow::Context;

/// mimalloc: a simulated fleet makes tens of millions of small, short-lived allocations
/// (messages, outputs, B-tree nodes) over gigabytes of node state; `bad-patch.toml` runs
/// 10–15% faster than with the system allocator (the README's simulator paragraph).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};
use patchmesh_sim::scenario::FIELDS_HELP;

/// Rehearse a patchmesh rollout on a simulated fleet, deterministically.
#[derive(Parser)]
#[command(name = "patchmesh-sim", version, after_long_help = FIELDS_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario and print one JSON report on stdout.
    #[command(after_long_help = FIELDS_HELP)]
    Run {
        /// Scenario file (TOML); see `--help` for every field.
        scenario: String,
        /// Seed; the same seed replays the same run bit for bit. Defaults to the scenario's.
        #[arg(long, env = "PATCHMESH_SEED")]
        seed: Option<u64>,
    },
    /// Rehearse the scenario's rollout over several seeds and print, per ring, when it starts
    /// and finishes (p50/p90), and the halt if the patch fails somewhere (what `patchmesh
    /// rollout plan` prints for a live fleet; it can export its scenario for this).
    Plan {
        /// Scenario file with a [rollout] table.
        scenario: String,
        /// Seeds 1..=N.
        #[arg(long, default_value_t = 5)]
        seeds: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("patchmesh-sim: {e:#}");
            std::process::exit(2);
        }
    }
}

fn real_main() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { scenario, seed } => {
            let s = patchmesh_sim::Scenario::load(&scenario)?;
            let seed = seed.unwrap_or(s.seed);
            let report = patchmesh_sim::run(&s, seed);
            println!("{}", serde_json::to_string_pretty(&report).context("encoding report")?);
            if report.invariant_violations.is_empty() {
                Ok(0)
            } else {
                eprintln!(
                    "patchmesh-sim: {} invariant violation(s) with seed {seed}; replay with:\n  cargo run --release -p patchmesh-sim -- run {scenario} --seed {seed}",
                    report.invariant_violations.len()
                );
                Ok(1)
            }
        }
        Cmd::Plan { scenario, seeds, json } => {
            let s = patchmesh_sim::Scenario::load(&scenario)?;
            if s.rollout.is_none() {
                anyhow::bail!("{scenario} has no [rollout] table to rehearse");
            }
            if seeds == 0 || seeds > 1000 {
                anyhow::bail!("--seeds must be 1..=1000");
            }
            let list: Vec<u64> = (1..=u64::from(seeds)).collect();
            let tz = jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC);
            let r = patchmesh_sim::rehearsal::rehearse(&s, &list, &tz);
            if json {
                println!("{}", serde_json::to_string_pretty(&r).context("encoding")?);
            } else {
                println!(
                    "{}: {} targeted nodes in {} sites, {} seeds, horizon {}",
                    s.name,
                    r.targeted_nodes,
                    s.sites,
                    r.seeds,
                    patchmesh_sim::rehearsal::span(r.horizon_ms)
                );
                for line in r.ring_lines().into_iter().chain(r.outcome_lines()) {
                    println!("{line}");
                }
            }
            if r.violations.is_empty() {
                Ok(0)
            } else {
                eprintln!("patchmesh-sim: invariant violations: {:?}", r.violations);
                Ok(1)
            }
        }
    }
}
