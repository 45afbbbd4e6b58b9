//! Replays the node crate's fuzz targets' committed seeds (`fuzz/seeds/<target>/`) and every
//! crash found so far (`fuzz/regressions/<target>/`) through the bodies in
//! `patchmesh_node::fuzzing`, on stable: what libFuzzer once found stays fixed.

use patchmesh_node::fuzzing::TARGETS;
use patchmesh_protocol::fuzzing::replay;
use std::path::PathBuf;

#[test]
fn every_node_fuzz_seed_and_regression_runs_without_a_panic() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, body) in TARGETS {
        let ran = replay(&root, name, *body);
        assert!(ran >= 2, "{name}: only {ran} seeds under {}", root.display());
    }
}

/// The seeds are what they claim: the package's configuration is accepted, a relay without
/// a peer id is refused, the real dpkg status head parses to packages.
#[test]
fn the_seeds_exercise_the_accepting_paths_too() {
    use patchmesh_node::config::NodeConfig;
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let read = |p: &str| std::fs::read_to_string(seeds.join(p)).unwrap();
    let at = std::path::Path::new("/etc/patchmesh/node.toml");
    NodeConfig::parse(&read("node_config/package.toml"), at).unwrap();
    NodeConfig::parse(&read("node_config/nat-office.toml"), at).unwrap();
    NodeConfig::parse(&read("node_config/relay.toml"), at).unwrap();
    let bad = NodeConfig::parse(&read("node_config/bad-relay.toml"), at).unwrap_err();
    assert!(bad.to_string().contains("/p2p/<peer id>"), "{bad}");
    let pkgs = patchmesh_node::inventory::parse_dpkg_status(&read("dpkg_status/unit")).unwrap();
    assert_eq!(pkgs.len(), 3);
}
