//! Fuzz target bodies for what a file or a peer can hand the node crate (libFuzzer runs them
//! through `fuzz/`, `scripts/fuzz.sh`; `node/tests/fuzz_corpus.rs` replays the committed seeds
//! and every regression on stable). Each must refuse bad input with an error, never panic,
//! and keep its bounds on what it accepts.

use crate::config::NodeConfig;
use crate::intel::{self, Import};
use crate::inventory::{self, Inventory};
use patchmesh_protocol::ids::Millis;
use std::path::Path;

/// Every target: (name, body).
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("node_config", node_config),
    ("dpkg_status", dpkg_status),
    ("peer_inventory", peer_inventory),
    ("intel_feeds", intel_feeds),
];

/// A node configuration file: parsed and checked; when accepted, every path is absolute.
pub fn node_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = NodeConfig::parse(text, Path::new("/etc/patchmesh/node.toml")) {
        for p in [&cfg.data_dir, &cfg.key, &cfg.genesis, &cfg.admission, &cfg.inventory_root] {
            assert!(p.is_absolute(), "relative path kept: {}", p.display());
        }
        assert!(cfg.anti_entropy_interval_ms >= 100);
    }
}

/// The dpkg status database (read lossily as text, as the collector does): at most
/// `PACKAGES_MAX` packages, each with a name.
pub fn dpkg_status(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(pkgs) = inventory::parse_dpkg_status(&text) {
        assert!(pkgs.len() <= inventory::PACKAGES_MAX);
        assert!(pkgs.iter().all(|p| !p.name.is_empty()));
    }
}

/// A full inventory another node sends (JSON): decoded, then summarised as the node does to
/// check it against the digest in the sender's signed record.
pub fn peer_inventory(data: &[u8]) {
    if let Ok(inv) = serde_json::from_slice::<Inventory>(data) {
        let _ = inv.summary();
    }
}

/// The intel feeds an admin imports: the first byte picks the format (Debian tracker JSON,
/// OSV JSON, OSV JSON lines, KEV, EPSS, an apt Packages/Sources index), the rest is the file.
pub fn intel_feeds(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else { return };
    let dir = std::env::temp_dir().join(format!("patchmesh-fuzz-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let (name, read): (&str, fn(&mut Import, &Path) -> Result<_, intel::ImportError>) =
        match kind % 6 {
            0 => ("tracker.json", intel::tracker::read),
            1 => ("osv.json", intel::osv::read_file),
            2 => ("osv.jsonl", intel::osv::read_lines),
            3 => ("kev.json", intel::kev::read),
            4 => ("epss.csv", intel::epss::read),
            _ => ("Packages", intel::apt::read_index),
        };
    let path = dir.join(name);
    if std::fs::write(&path, body).is_err() {
        return;
    }
    let mut import = Import::new(Millis(1_700_000_000_000));
    let _ = read(&mut import, &path);
}
