//! Replays every fuzz target's committed seeds (`fuzz/seeds/<target>/`) and every crash
//! found so far (`fuzz/regressions/<target>/`) through the target bodies in
//! `patchmesh_protocol::fuzzing`: what libFuzzer once found stays fixed in the normal suite.

use patchmesh_protocol::fuzzing::TARGETS;
use std::path::PathBuf;

#[test]
fn every_fuzz_corpus_and_regression_input_runs_without_a_panic() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut ran = 0;
    for (name, body) in TARGETS {
        for kind in ["seeds", "regressions"] {
            let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else { continue };
            let mut files: Vec<PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
            files.sort();
            for f in files {
                let bytes = std::fs::read(&f).unwrap();
                let r = std::panic::catch_unwind(|| body(&bytes));
                assert!(r.is_ok(), "{name}: {} panicked", f.display());
                ran += 1;
            }
        }
        // Edge cases every decoder must take.
        for bytes in [&[][..], &[0u8; 1][..], &[0xff; 64][..]] {
            body(bytes);
        }
    }
    assert!(ran >= TARGETS.len() * 8, "only {ran} seeds found under {}", root.display());
}
