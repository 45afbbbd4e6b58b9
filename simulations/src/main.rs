//! `patchmesh-sim run SCENARIO --seed N`: one JSON report on stdout; exit 1 on a violation.

use anyhow::Context;
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
    }
}
