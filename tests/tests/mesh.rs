//! Real `patchmesh node run` processes on 127.0.0.1.

use patchmesh_node::control::{KeyShowOutput, KeygenOutput, StatusView};
use patchmesh_tests::{cli_json, serial, wait_for, Mesh, RogueReport};
use std::process::Command;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(60);

/// Refusals other than stale versions (which honest gossip races produce).
fn refusals(status: &StatusView) -> u64 {
    status
        .rejected
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "replay" | "gap"))
        .map(|(_, n)| n)
        .sum()
}

fn converged(mesh: &Mesh, changes: usize) {
    if let Err(seen) = mesh.converge(changes, CONVERGE) {
        let summary: Vec<String> = seen
            .iter()
            .map(|s| match s {
                Some(s) => {
                    format!("{} changes={} state={}", s.site, s.catalog_changes, s.state_hash)
                }
                None => "(no answer)".to_string(),
            })
            .collect();
        // The log of node 0 and of every node whose state differs from the most common one.
        let key = |s: &Option<StatusView>| {
            s.as_ref().map(|s| (s.catalog_state.clone(), s.state_hash.clone()))
        };
        let common = seen
            .iter()
            .max_by_key(|a| seen.iter().filter(|b| key(b) == key(a)).count())
            .and_then(key);
        // `seen` holds the running nodes, in order.
        let running = (0..mesh.nodes.len()).filter(|i| mesh.nodes[*i].child.is_some());
        let logs: Vec<String> = running
            .zip(&seen)
            .enumerate()
            .filter(|(k, (_, s))| *k == 0 || key(s) != common)
            .map(|(_, (i, s))| format!("node {i}: {s:?}\nnode {i} log:\n{}", mesh.log(i)))
            .collect();
        panic!("no convergence on {changes} changes:\n{}\n{}", summary.join("\n"), logs.join("\n"));
    }
}

#[test]
fn a_change_published_at_one_node_reaches_all_ten() {
    let _serial = serial();
    let mut mesh = Mesh::new("publish", 10, 2);
    mesh.start_all();
    let out = mesh.publish(7, "openssl-3.0.13");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    converged(&mesh, 1);
    for i in 0..10 {
        let names = mesh.catalog_names(i);
        assert_eq!(names, ["openssl-3.0.13"], "node {i}");
        let status = mesh.status(i);
        assert!(status.peers_admitted >= 1, "node {i}: {status:?}");
        assert_eq!(refusals(&status), 0, "honest nodes refused something: {status:?}");
    }
    // A second admin change from another node and site converges too.
    let out = mesh.publish(2, "curl-8.5.0");
    assert!(out.status.success());
    converged(&mesh, 2);
}

#[test]
fn a_peer_without_a_certificate_gets_nothing_in_and_is_dropped() {
    let _serial = serial();
    let mut mesh = Mesh::new("rogue", 4, 1);
    mesh.start_all();
    converged(&mesh, 0);
    let target = mesh.bootstrap.clone().unwrap();
    let genesis = mesh.mesh_dir().join("genesis.pm").display().to_string();
    let rogue = Command::new(env!("CARGO_BIN_EXE_rogue"))
        .args([&genesis, "site0", &target, "3000", "16000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the rogue is connected (before its hello), the admin publishes: the rogue must not
    // receive it.
    let connected = wait_for(Duration::from_secs(20), || {
        mesh.peers(0).iter().any(|p| !p.admitted).then_some(())
    });
    assert!(connected.is_some(), "the rogue never connected");
    let out = mesh.publish(0, "honest");
    assert!(out.status.success());
    let report = rogue.wait_with_output().unwrap();
    let report: RogueReport = serde_json::from_slice(&report.stdout).unwrap();
    assert!(report.gossip_published >= 1, "{report:?}");
    assert_eq!(report.gossip_received, 0, "an unadmitted peer received mesh data: {report:?}");
    assert!(report.hello_sent, "{report:?}");
    assert!(report.disconnected_ms.is_some(), "the rogue was never disconnected: {report:?}");
    assert!(!report.connected_at_end, "{report:?}");
    // Nodes that found the rogue through the DHT and dialled it dropped it too (no valid hello
    // within the admission timeout).
    assert_eq!(report.connections_at_end, 0, "honest nodes stayed connected: {report:?}");
    // No honest node stored or relayed the forged change: everyone holds only the honest one.
    converged(&mesh, 1);
    for i in 0..4 {
        let names = mesh.catalog_names(i);
        assert_eq!(names, ["honest"], "node {i}");
    }
    let s0 = mesh.status(0);
    assert!(s0.unadmitted_dropped >= 1, "{s0:?}");
    assert!(refusals(&s0) >= 1, "the self-signed hello was not refused: {s0:?}\nrogue: {report:?}");
    let peers = mesh.peers(0);
    assert!(peers.iter().all(|p| p.admitted), "{peers:?}");
}

#[test]
fn restart_and_kill_9_keep_and_reverify_state() {
    let _serial = serial();
    let mut mesh = Mesh::new("restart", 5, 1);
    mesh.start_all();
    assert!(mesh.publish(1, "first").status.success());
    converged(&mesh, 1);

    // A clean restart comes back from its own store: the same catalog and records, every
    // object re-verified. Its site state then changes once, by design: the restart writes
    // "stopping" and "started" to its audit log, and its record carries the new checkpoint;
    // every node of the site agrees on the state again.
    let before = mesh.status(3);
    mesh.stop(3);
    mesh.start(3);
    let after = mesh.status(3);
    assert_eq!(after.catalog_state, before.catalog_state, "{after:?}");
    assert_eq!(after.site_records, before.site_records, "{after:?}");
    assert!(after.restored_objects >= 6, "{after:?}");
    assert_eq!(after.restore_refused, 0, "{after:?}");
    converged(&mesh, 1);

    // kill -9 while changes stream in: the store opens, everything re-verifies, it catches up.
    let publisher = {
        let admin = mesh.admin_key();
        let config = mesh.nodes[0].config();
        let bin = patchmesh_tests::binary();
        std::thread::spawn(move || {
            for k in 0..12 {
                let id = format!("{:064x}", k + 1000);
                let name = format!("burst-{k}");
                let out = Command::new(&bin)
                    .args([
                        "patch",
                        "add",
                        "--name",
                        &name,
                        "--content-id",
                        &id,
                        "--size-bytes",
                        "1",
                        "--admin-key",
                        &admin,
                        "--config",
                        &config,
                    ])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    mesh.kill(2);
    publisher.join().unwrap();
    mesh.start(2);
    let restarted = mesh.status(2);
    assert_eq!(restarted.restore_refused, 0, "{restarted:?}");
    converged(&mesh, 13);
}

#[test]
fn a_revoked_admin_key_is_refused_everywhere() {
    let _serial = serial();
    let mut mesh = Mesh::new("revoke", 5, 2);
    mesh.start_all();
    patchmesh_tests::ensure_tools(&["ssh-agent", "ssh-add"]);
    // The second admin's key is encrypted with a passphrase (read from a file, as scripts do).
    let pass = mesh.root.0.join("passphrase");
    std::fs::write(&pass, "a long passphrase\n").unwrap();
    std::env::set_var("PATCHMESH_PASSPHRASE_FILE", &pass);
    let second = mesh.root.0.join("second.key").display().to_string();
    let key: KeygenOutput = cli_json(&["admin", "keygen", "--out", &second, "--json"]);
    let second_pub = key.public_key;
    let on_disk = std::fs::read_to_string(&second).unwrap();
    assert!(on_disk.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"), "{on_disk}");
    let root = mesh.mesh_dir().join("root.key").display().to_string();

    let add =
        mesh.cli_at(0, &["admin", "add", "--key", &second_pub, "--root-key", &root, "--json"]);
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    let all_at = |v: u64| {
        wait_for(CONVERGE, || (0..5).all(|i| mesh.status(i).trust_version == v).then_some(()))
    };
    assert!(all_at(2).is_some(), "admin set 2 did not spread");

    // The second admin can publish with the passphrase, and not with a wrong one…
    let by_file = mesh.publish_as(3, "by-second", &second);
    assert!(by_file.status.success(), "{}", String::from_utf8_lossy(&by_file.stderr));
    let wrong = mesh.root.0.join("wrong");
    std::fs::write(&wrong, "not the passphrase\n").unwrap();
    std::env::set_var("PATCHMESH_PASSPHRASE_FILE", &wrong);
    let refused = mesh.publish_as(3, "wrong-passphrase", &second);
    assert_eq!(refused.status.code(), Some(1));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("wrong passphrase"), "{why}");
    std::env::set_var("PATCHMESH_PASSPHRASE_FILE", &pass);

    // …and through ssh-agent, the secret never on disk again: the nodes verify the agent's
    // signature like the file key's.
    let agent = Agent::start(&mesh.root.0);
    let ssh = mesh.root.0.join("second.ssh").display().to_string();
    let export = patchmesh_tests::cli(&["key", "export-ssh", &second, "--out", &ssh]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    agent.add(&ssh);
    std::fs::remove_file(&ssh).unwrap();
    let fp = agent.fingerprint();
    let held = format!("agent:{fp}");
    let shown: KeyShowOutput = cli_json(&["key", "show", &held, "--json"]);
    assert_eq!(shown.public_key, second_pub);
    assert_eq!(shown.storage, "ssh-agent");
    let publish_as_second = |i: usize, name: &str| mesh.publish_as(i, name, &held);
    let by_agent = publish_as_second(2, "by-agent");
    assert!(by_agent.status.success(), "{}", String::from_utf8_lossy(&by_agent.stderr));
    converged(&mesh, 2);

    // …until a root revokes it at node 1.
    let revoke =
        mesh.cli_at(1, &["admin", "revoke", "--key", &second_pub, "--root-key", &root, "--yes"]);
    assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
    assert!(all_at(3).is_some(), "the revocation did not spread");
    for i in 0..5 {
        let out = publish_as_second(i, &format!("after-revoke-{i}"));
        assert_eq!(out.status.code(), Some(4), "node {i} accepted a revoked admin's change");
    }
    // What it signed before the revocation stays; nothing after it got in anywhere.
    converged(&mesh, 2);
    std::env::remove_var("PATCHMESH_PASSPHRASE_FILE");
}

/// An ssh-agent of the test's own (foreground, its socket in the test directory), set as
/// `SSH_AUTH_SOCK` for the commands the test runs; killed when dropped.
struct Agent {
    child: std::process::Child,
    socket: std::path::PathBuf,
}

impl Agent {
    fn start(dir: &std::path::Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting ssh-agent");
        assert!(
            wait_for(Duration::from_secs(10), || socket.exists().then_some(())).is_some(),
            "ssh-agent made no socket"
        );
        std::env::set_var("SSH_AUTH_SOCK", &socket);
        Agent { child, socket }
    }

    fn add(&self, key: &str) {
        let out = Command::new("ssh-add").arg(key).env("SSH_AUTH_SOCK", &self.socket).output();
        let out = out.expect("running ssh-add");
        assert!(out.status.success(), "ssh-add: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The SHA256 fingerprint of the one key it holds.
    fn fingerprint(&self) -> String {
        let out = Command::new("ssh-add").arg("-l").env("SSH_AUTH_SOCK", &self.socket).output();
        let text = String::from_utf8(out.expect("running ssh-add -l").stdout).unwrap();
        let fp = text.split_whitespace().nth(1).expect("ssh-add -l lists the key");
        assert!(fp.starts_with("SHA256:"), "{text}");
        fp.to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::env::remove_var("SSH_AUTH_SOCK");
    }
}

#[test]
fn with_a_mesh_psk_members_converge_and_strangers_cannot_handshake() {
    let _serial = serial();
    let mut mesh = Mesh::new("psk", 3, 1);
    let psk = mesh.root.0.join("mesh.psk");
    std::fs::write(&psk, format!("{}\n", "ab".repeat(32))).unwrap();
    mesh.extra_config = format!(
        "listen = [\"/ip4/127.0.0.1/tcp/0\"]\npsk_file = \"{}\"\nanti_entropy_interval_ms = 1000\n",
        psk.display()
    );
    mesh.start_all();
    assert!(mesh.bootstrap.as_deref().unwrap().contains("/tcp/"), "{:?}", mesh.bootstrap);
    assert!(mesh.publish(2, "behind-psk").status.success());
    converged(&mesh, 1);

    // A peer without the key (the rogue speaks every other protocol right) never gets a
    // connection up.
    let target = mesh.bootstrap.clone().unwrap();
    let genesis = mesh.mesh_dir().join("genesis.pm").display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_rogue"))
        .args([&genesis, "site0", &target, "500", "4000"])
        .output()
        .unwrap();
    let report: RogueReport = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.connected_ms.is_none(), "a stranger completed a handshake: {report:?}");
    assert_eq!(report.gossip_received, 0);
    assert_eq!(mesh.status(0).unadmitted_dropped, 0);
}

#[test]
fn a_damaged_store_stops_the_node_with_what_to_do_and_a_fresh_one_signs_above_its_old_floor() {
    let _guard = serial();
    let mut m = Mesh::new("damaged-store", 2, 1);
    m.start_all();
    let out = m.publish(0, "before-damage");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    converged(&m, 1);
    m.stop(1);
    let data = m.nodes[1].dir.join("data");
    let floor = |data: &std::path::Path| -> u64 {
        let text = std::fs::read_to_string(data.join("store.floor")).unwrap_or_default();
        text.trim().parse().unwrap_or(0)
    };
    let old_floor = floor(&data);
    assert!(old_floor >= 1, "node 1 signed records, and its floor is kept beside the store");

    // sled's own settings file damaged: the node refuses to run and says what to do.
    let conf = data.join("store").join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes.iter_mut().for_each(|b| *b ^= 0x5A);
    std::fs::write(&conf, bytes).unwrap();
    let run = Command::new(patchmesh_tests::binary())
        .args(["node", "run", "--config", &m.nodes[1].config()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "a damaged store was run on:\n{err}");
    assert!(err.contains("cannot open the store at") && err.contains("move"), "{err}");

    // Following that advice: the store moved aside, the node starts empty, catches up from
    // its peer, and signs its record above the versions it had signed before.
    std::fs::rename(data.join("store"), data.join("store.damaged")).unwrap();
    std::fs::remove_file(data.join("store.floor")).unwrap();
    m.start(1);
    if m.converge(1, CONVERGE).is_err() {
        panic!("node 0:\n{}\nnode 1:\n{}", m.log(0), m.log(1));
    }
    let caught_up = wait_for(Duration::from_secs(30), || (floor(&data) > old_floor).then_some(()));
    assert!(caught_up.is_some(), "floor {} not above {old_floor}:\n{}", floor(&data), m.log(1));
    converged(&m, 1);
}
