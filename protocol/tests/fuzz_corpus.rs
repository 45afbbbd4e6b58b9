//! Replays every fuzz target's committed seeds (`fuzz/seeds/<target>/`) and every crash
//! found so far (`fuzz/regressions/<target>/`) through the target bodies in
//! `patchmesh_protocol::fuzzing`: what libFuzzer once found stays fixed in the normal suite.

use patchmesh_protocol::fuzzing::{replay, TARGETS};
use std::path::PathBuf;

#[test]
fn every_fuzz_corpus_and_regression_input_runs_without_a_panic() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let ran: usize = TARGETS.iter().map(|(name, body)| replay(&root, name, *body)).sum();
    assert!(ran >= TARGETS.len() * 8, "only {ran} seeds found under {}", root.display());
}
