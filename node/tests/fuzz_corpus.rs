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
    // Every feed seed imports; the apt indexes reach the parser (a mirror's path names the
    // suite), one without a Release file beside it, one with.
    for seed in std::fs::read_dir(seeds.join("intel_feeds")).unwrap() {
        let path = seed.unwrap().path();
        let got = patchmesh_node::fuzzing::import_feed(&std::fs::read(&path).unwrap());
        let info = got.unwrap().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(info.records > 0, "{}: {info:?}", path.display());
    }
    let bare = import_feed_seed(&seeds, "5-packages");
    assert!(bare.skipped.keys().any(|k| k.contains("no Release file")), "{bare:?}");
    let released = import_feed_seed(&seeds, "6-packages-release");
    assert_eq!(released.date.as_deref(), Some("Sat, 05 Dec 2026 10:00:00 UTC"), "{released:?}");
}

fn import_feed_seed(
    seeds: &std::path::Path,
    name: &str,
) -> patchmesh_protocol::intel::bundle::SourceInfo {
    let bytes = std::fs::read(seeds.join("intel_feeds").join(name)).unwrap();
    patchmesh_node::fuzzing::import_feed(&bytes).unwrap().unwrap()
}
