//! Payload transfer between real node processes on 127.0.0.1.

use patchmesh_node::control::{ContentView, PeerView};
use patchmesh_tests::{serial, wait_for, AttackReport, Mesh};
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
fn fetched(mesh: &Mesh, i: usize, content: &str) -> ContentView {
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
    // The site election assumes the members of a site see each other, as on a LAN.
    let meshed = wait_for(Duration::from_secs(30), || {
        (0..6).all(|i| admitted_peers(&mesh, i) == 5).then_some(())
    });
    assert!(meshed.is_some(), "the six nodes never all connected");
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
        assert_eq!(p.state, "complete", "{p:?}");
        wan_by_site[i % 2] += p.wan_bytes;
    }
    assert_eq!(wan_by_site[0], 0, "site 0 holds the origin and must not fetch from site 1");
    let ratio = wan_by_site[1] as f64 / size as f64;
    assert!(ratio <= 1.05, "site 1 pulled {ratio:.3} copies across the WAN");
    assert!(ratio >= 0.99, "site 1 got the payload without crossing the WAN? {ratio}");
}

fn spawn_evil(
    mesh: &Mesh,
    target: usize,
    file: &Path,
    mode: &str,
    run_ms: u64,
) -> std::process::Child {
    let (key, cert) = mesh.extra_identity(&format!("evil-{mode}"), &mesh.nodes[target].site);
    std::process::Command::new(env!("CARGO_BIN_EXE_attacker"))
        .args([
            &mesh.mesh_dir().join("genesis.pm").display().to_string(),
            &key,
            &cert,
            &mesh.dial_addr(target),
            &file.display().to_string(),
            mode,
            &run_ms.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn admitted_peers(mesh: &Mesh, i: usize) -> usize {
    let out = mesh.cli_at(i, &["peers", "--json"]);
    let peers: Vec<PeerView> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    peers.iter().filter(|p| p.admitted).count()
}

#[test]
fn lying_corrupt_slow_and_overrunning_sources_are_dropped_and_the_download_completes() {
    let _serial = serial();
    let mut mesh = Mesh::new("evil", 2, 1);
    // The honest source is slow enough that every source gets ranges.
    mesh.node_config.insert(0, "rate_bytes_per_s = 4194304\n".into());
    mesh.start_all();
    let file = mesh.root.0.join("payload.bin");
    // Enough 4 MiB ranges that every source is asked for some.
    let expected = random_file(&file, 32 * 1024 * 1024, 2);
    let together = wait_for(Duration::from_secs(30), || {
        (admitted_peers(&mesh, 0) == 1 && admitted_peers(&mesh, 1) == 1).then_some(())
    });
    assert!(together.is_some(), "nodes 0 and 1 never connected:\n{}", mesh.log(1));
    let modes = ["corrupt", "lie", "slow", "overrun"];
    let evil: Vec<_> = modes.iter().map(|m| spawn_evil(&mesh, 1, &file, m, 60_000)).collect();
    let admitted =
        wait_for(Duration::from_secs(40), || (admitted_peers(&mesh, 1) >= 5).then_some(()));
    assert!(admitted.is_some(), "the evil peers were not admitted:\n{}", mesh.log(1));
    let content = mesh.publish_file(0, "agent-2.2", &file);
    assert_eq!(content, expected);
    let p = fetched(&mesh, 1, &content);
    let data = std::fs::read(mesh.nodes[1].dir.join("data/content").join(&content)).unwrap();
    assert_eq!(blake3::hash(&data).to_hex().to_string(), content);
    for (fault, mode) in
        [("corrupt", "corrupt"), ("lied", "lie"), ("slow", "slow"), ("overrun", "overrun")]
    {
        assert!(
            p.dropped.get(fault).copied().unwrap_or(0) >= 1,
            "the {mode} source was not dropped: {p:?}\n{}",
            mesh.log(1)
        );
    }
    // Each was asked for data. Each liar was penalised by the node; the slow one was only
    // rested: slowness is the path's doing, never an offence.
    let peers = mesh.peers(1);
    for (m, child) in modes.iter().zip(evil) {
        let out = child.wait_with_output().unwrap();
        let r: AttackReport = serde_json::from_slice(&out.stdout).unwrap();
        assert!(r.ranges_asked >= 1, "{m}: {r:?}");
        let penalties = peers.iter().find(|x| x.peer_id == r.peer_id).map(|x| x.penalties);
        if *m == "slow" {
            assert_eq!(penalties, Some(0), "the slow source was penalised: {r:?}\n{peers:?}");
            assert!(r.disconnected_ms.is_none(), "the slow source was disconnected: {r:?}");
        } else {
            let penalised = penalties.unwrap_or(0) >= 1 || r.disconnected_ms.is_some();
            assert!(penalised, "{m} was not penalised: {r:?}\n{peers:?}");
        }
    }
}

#[test]
fn an_oversized_range_request_is_refused_and_penalised() {
    let _serial = serial();
    let mut mesh = Mesh::new("bigrange", 1, 1);
    mesh.start_all();
    let file = mesh.root.0.join("payload.bin");
    random_file(&file, 1024 * 1024, 3);
    mesh.publish_file(0, "agent-2.3", &file);
    let evil = spawn_evil(&mesh, 0, &file, "big-range", 12_000);
    // While it is connected, the node has penalised it.
    let penalised = wait_for(Duration::from_secs(10), || {
        let peers: Vec<PeerView> =
            serde_json::from_slice(&mesh.cli_at(0, &["peers", "--json"]).stdout).ok()?;
        peers.iter().any(|x| x.admitted && x.penalties >= 1).then_some(())
    });
    let out = evil.wait_with_output().unwrap();
    let r: AttackReport = serde_json::from_slice(&out.stdout).unwrap();
    let reply = r.big_range_reply.as_deref().unwrap_or_default();
    assert!(reply.contains("Refused") && reply.contains("+0 bytes"), "{r:?}");
    assert!(penalised.is_some(), "the node never penalised the requester: {r:?}");
}

#[test]
fn a_catalog_size_that_does_not_match_the_content_is_never_completed() {
    let _serial = serial();
    let mut mesh = Mesh::new("mismatch", 2, 1);
    mesh.start_all();
    let file = mesh.root.0.join("payload.bin");
    let real = random_file(&file, 2 * 1024 * 1024, 4);
    // Node 0 holds the real payload; the admin then publishes its id with a wrong size.
    let imported = mesh.cli_at(
        0,
        &[
            "patch",
            "add",
            &file.display().to_string(),
            "--name",
            "real",
            "--admin-key",
            &mesh.admin_key(),
            "--json",
        ],
    );
    assert!(imported.status.success());
    let wrong = (2 * 1024 * 1024 + 1).to_string();
    let out = mesh.cli_at(
        0,
        &[
            "patch",
            "add",
            "--name",
            "wrong",
            "--content-id",
            &real,
            "--size-bytes",
            &wrong,
            "--admin-key",
            &mesh.admin_key(),
        ],
    );
    assert!(out.status.success());
    // Node 1 gets the real one; the wrong one can never verify anywhere.
    mesh.await_payload(&real, PAYLOAD_WAIT).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..2 {
        let c = mesh.contents(i);
        assert_eq!(c[&real].size_bytes, 2 * 1024 * 1024, "node {i}: {c:?}");
        assert!(c[&real].complete);
    }
}

#[test]
fn a_download_killed_mid_way_resumes_without_fetching_a_verified_group_twice() {
    let _serial = serial();
    let mut mesh = Mesh::new("resume", 2, 1);
    mesh.node_config.insert(0, "rate_bytes_per_s = 2097152\n".into());
    mesh.start_all();
    let file = mesh.root.0.join("payload.bin");
    let size = 16 * 1024 * 1024;
    let content = {
        random_file(&file, size, 5);
        mesh.publish_file(0, "agent-2.4", &file)
    };
    let before = wait_for(Duration::from_secs(30), || {
        let have = mesh.contents(1).get(&content)?.have_bytes;
        (have >= 4 * 1024 * 1024).then_some(have)
    })
    .expect("the download never got going");
    mesh.kill(1);
    mesh.start(1);
    let p = fetched(&mesh, 1, &content);
    let resumed = p.resumed_bytes;
    let received = p.lan_bytes + p.wan_bytes;
    assert!(resumed >= before, "kept {resumed} bytes, had verified {before} before the kill");
    assert!(resumed < size as u64);
    assert_eq!(received, size as u64 - resumed, "{p:?}");
    let data = std::fs::read(mesh.nodes[1].dir.join("data/content").join(&content)).unwrap();
    assert_eq!(blake3::hash(&data).to_hex().to_string(), content);
}

#[test]
fn a_full_disk_stops_the_download_keeps_verified_groups_and_resumes_after() {
    let _serial = serial();
    let mut mesh = Mesh::new("diskfull", 2, 1);
    // Node 1's content store lives on a 3 MiB tmpfs.
    let store = mesh.nodes[1].dir.join("data/content");
    std::fs::create_dir_all(&store).unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs", &store.display().to_string()])
        .status()
        .unwrap();
    assert!(mount.success(), "this test needs root to mount a small tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(store.clone());
    mesh.start_all();
    let file = mesh.root.0.join("payload.bin");
    let size = 6 * 1024 * 1024;
    random_file(&file, size, 6);
    let content = mesh.publish_file(0, "agent-2.5", &file);
    let out = mesh.cli_at(1, &["fetch", &content, "--json", "--timeout-s", "60"]);
    assert!(!out.status.success(), "a 6 MiB payload fit in 3 MiB?");
    let p: ContentView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p.state, "failed", "{p:?}");
    assert!(p.error.as_deref().unwrap_or_default().contains("disk full"), "{p:?}");
    let kept = mesh.contents(1)[&content].have_bytes;
    assert!(kept > 0 && kept < size as u64, "kept {kept}");
    // More room: the same fetch resumes from what was kept and completes.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=32m", &store.display().to_string()])
        .status()
        .unwrap();
    assert!(grown.success());
    let p = fetched(&mesh, 1, &content);
    assert_eq!(p.resumed_bytes, kept, "{p:?}");
    assert_eq!(p.lan_bytes, size as u64 - kept, "{p:?}");
    let data = std::fs::read(store.join(&content)).unwrap();
    assert_eq!(blake3::hash(&data).to_hex().to_string(), content);
}
