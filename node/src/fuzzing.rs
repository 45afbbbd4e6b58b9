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
/// OSV JSON, OSV JSON lines, KEV, EPSS, an apt `Packages` index where a mirror keeps it, the
/// same with a `Release` file beside it), the rest is the file. For the last, two bytes
/// (little-endian) give the length of the `Release` text that comes first.
pub fn intel_feeds(data: &[u8]) {
    let _ = import_feed(data);
}

/// What [`intel_feeds`] does, returning the import's outcome (`None` when the input was too
/// short to name a format, or the files could not be written).
pub fn import_feed(
    data: &[u8],
) -> Option<Result<patchmesh_protocol::intel::bundle::SourceInfo, intel::ImportError>> {
    let (&kind, body) = data.split_first()?;
    // One directory per call: tests import seeds from several threads of one process at once,
    // and a shared file would let one call read what another just wrote.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("patchmesh-fuzz-{}-{call}", std::process::id()));
    let (name, read): (&str, fn(&mut Import, &Path) -> Result<_, intel::ImportError>) =
        match kind % 7 {
            0 => ("tracker.json", intel::tracker::read),
            1 => ("osv.json", intel::osv::read_file),
            2 => ("osv.jsonl", intel::osv::read_lines),
            3 => ("kev.json", intel::kev::read),
            4 => ("epss.csv", intel::epss::read),
            5 => ("plain/dists/bookworm/main/binary-amd64/Packages", intel::apt::read_index),
            _ => ("released/dists/bookworm/main/binary-amd64/Packages", intel::apt::read_index),
        };
    let path = dir.join(name);
    let mut body = body;
    if kind % 7 == 6 {
        let (len, rest) = body.split_first_chunk::<2>()?;
        let (release, rest) = rest.split_at(usize::from(u16::from_le_bytes(*len)).min(rest.len()));
        if std::fs::create_dir_all(dir.join("released/dists/bookworm")).is_err()
            || std::fs::write(dir.join("released/dists/bookworm/Release"), release).is_err()
        {
            return None;
        }
        body = rest;
    }
    if path.parent().is_some_and(|p| std::fs::create_dir_all(p).is_err())
        || std::fs::write(&path, body).is_err()
    {
        return None;
    }
    let mut import = Import::new(Millis(1_700_000_000_000));
    let got = read(&mut import, &path);
    let _ = std::fs::remove_dir_all(&dir);
    Some(got)
}
