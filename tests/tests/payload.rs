//! Payload transfer between real node processes on 127.0.0.1.

use patchmesh_tests::{serial, wait_for, Mesh};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const PAYLOAD_WAIT: Duration = Duration::from_secs(30);

fn random_file(path: &Path, len: usize, seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, &data).unwrap();
    blake3::hash(&data).to_hex().to_string()
}

/// Where node `i` stands on `content` (`patchmesh fetch --json` once it is complete).
fn fetched(mesh: &Mesh, i: usize, content: &str) -> Value {
    let out = mesh.cli_at(i, &["fetch", content, "--json", "--timeout-s", "120"]);
    assert!(
        out.status.success(),
        "fetch at node {i}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        mesh.log(i)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_published_payload_reaches_every_node_crossing_each_site_once() {
    let _serial = serial();
    let mut mesh = Mesh::new("payload", 6, 2);
    mesh.start_all();
    let file = mesh.root.0.join("payload.bin");
    let size = 6 * 1024 * 1024 + 123;
    let expected = random_file(&file, size, 1);
    let content = mesh.publish_file(0, "agent-2.1", &file);
    assert_eq!(content, expected, "the content id is the file's BLAKE3");
    mesh.await_payload(&content, PAYLOAD_WAIT).unwrap_or_else(|e| panic!("{e}\n{}", mesh.log(1)));
    // Every copy is the file, byte for byte.
    for i in 0..6 {
        let data = std::fs::read(mesh.nodes[i].dir.join("data/content").join(&content)).unwrap();
        assert_eq!(blake3::hash(&data).to_hex().to_string(), content, "node {i}");
    }
    // Site 1 (nodes 1, 3, 5) received one copy across the "WAN" between them; site 0 none.
    let mut wan_by_site = [0u64; 2];
    for i in 1..6 {
        let p = fetched(&mesh, i, &content);
        assert_eq!(p["state"], "complete", "{p}");
        wan_by_site[i % 2] += p["wan_bytes"].as_u64().unwrap();
    }
    assert_eq!(wan_by_site[0], 0, "site 0 holds the origin and must not fetch from site 1");
    let ratio = wan_by_site[1] as f64 / size as f64;
    assert!(ratio <= 1.05, "site 1 pulled {ratio:.3} copies across the WAN");
    assert!(ratio >= 0.99, "site 1 got the payload without crossing the WAN? {ratio}");
}
