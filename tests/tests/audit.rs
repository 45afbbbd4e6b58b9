//! The audit log on real node processes: exported over the mesh and checked against the
//! checkpoint in the node's signed record, verified offline with the genesis alone, tampering
//! named by sequence number, and kill -9 in the middle of writes never leaving a broken chain.

use patchmesh_node::control::AuditExportView;
use patchmesh_tests::{cli, serial, wait_for, Mesh};
use std::time::Duration;

fn verify(m: &Mesh, file: &std::path::Path) -> std::process::Output {
    let genesis = m.mesh_dir().join("genesis.pm");
    cli(&[
        "audit",
        "verify",
        &file.display().to_string(),
        "--genesis",
        &genesis.display().to_string(),
    ])
}

fn export_of(m: &Mesh, at: usize, node: Option<&str>) -> Result<AuditExportView, String> {
    let mut args = vec!["audit", "export"];
    if let Some(n) = node {
        args.extend(["--node", n]);
    }
    let out_file = m.root.0.join(format!("export-{at}-{}.log", node.unwrap_or("self")));
    let out = out_file.display().to_string();
    args.extend(["--out", &out]);
    let o = m.cli_at(at, &args);
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    let text = std::fs::read_to_string(&out_file).unwrap();
    let genesis = patchmesh_node::files::read_envelope(&m.mesh_dir().join("genesis.pm")).unwrap();
    let verified = patchmesh_protocol::audit::verify_export(
        &text,
        &genesis,
        &patchmesh_protocol::crypto::Ed25519,
    )
    .map_err(|e| e.to_string())?;
    Ok(AuditExportView {
        node: node.unwrap_or("self").into(),
        verified,
        record_checkpoint: None,
        text,
    })
}

#[test]
fn a_peers_log_over_the_mesh_verifies_and_tampering_is_named() {
    let _g = serial();
    let mut m = Mesh::new("audit-mesh", 2, 1);
    m.start_all();
    for i in 0..3 {
        assert!(m.publish(0, &format!("audit-patch-{i}")).status.success());
    }
    m.converge(3, Duration::from_secs(30)).expect("catalog converges");
    // Node 1's catalog changes are in its log; node 0 fetches it over the mesh once it holds
    // node 1's record with a checkpoint, and checks the export against that checkpoint.
    let key1 = m.nodes[1].key.clone();
    let file = m.root.0.join("node1.log");
    let fetched = wait_for(Duration::from_secs(30), || {
        let o = m
            .cli_at(0, &["audit", "export", "--node", &key1, "--out", &file.display().to_string()]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.success() && err.contains("agrees with the checkpoint")).then_some(err)
    });
    assert!(
        fetched.is_some(),
        "node 0 fetched node 1's log and checked it against its record:\n{}",
        m.log(0)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.lines().filter(|l| l.contains("\"type\":\"admin_object_applied\"")).count() >= 3,
        "{text}"
    );
    assert!(text.contains("\"type\":\"node_started\""));

    let ok = verify(&m, &file);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let said = String::from_utf8_lossy(&ok.stdout);
    assert!(said.starts_with("OK: ") && said.contains(&key1), "{said}");

    // One byte changed in entry 2 (its timestamp): refused, naming entry 2.
    let at = text.find("{\"entry\":{\"seq\":2,").unwrap();
    let t = at + text[at..].find("\"at_ms\":").unwrap() + "\"at_ms\":".len();
    let mut bytes = text.clone().into_bytes();
    bytes[t] = if bytes[t] == b'1' { b'2' } else { b'1' };
    std::fs::write(&file, &bytes).unwrap();
    let bad = verify(&m, &file);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("first bad entry 2"), "{err}");

    // An entry removed: refused, naming it.
    let without: String =
        text.split_inclusive('\n').filter(|l| !l.starts_with("{\"entry\":{\"seq\":3,")).collect();
    std::fs::write(&file, without).unwrap();
    let err = String::from_utf8_lossy(&verify(&m, &file).stderr).into_owned();
    assert!(err.contains("first bad entry 3"), "{err}");

    // This node's own log, exported here, verifies too.
    let own = export_of(&m, 0, None).unwrap();
    assert!(own.verified.entries >= 4, "{:?}", own.verified);
}

#[test]
fn kill_9_while_writing_never_breaks_the_chain() {
    let _g = serial();
    let mut m = Mesh::new("audit-crash", 1, 1);
    m.node_env.insert(0, vec![("PATCHMESH_TEST_AUDIT_FLOOD".into(), "1".into())]);
    let mut last_seq = 0;
    let mut torn_seen = 0;
    for round in 0..4u64 {
        m.start(0);
        std::thread::sleep(Duration::from_millis(300 + round * 170));
        m.kill(0);
        // Restart without the flood: the log reopens, cuts a torn tail, and verifies whole.
        m.node_env.remove(&0);
        m.start(0);
        let export =
            export_of(&m, 0, None).unwrap_or_else(|e| panic!("round {round}: {e}\n{}", m.log(0)));
        assert_eq!(export.verified.from_seq, 1, "nothing was lost from the start");
        assert!(export.verified.through_seq > last_seq, "round {round}: the log grew");
        last_seq = export.verified.through_seq;
        torn_seen += export
            .text
            .lines()
            .filter(|l| {
                l.contains("\"type\":\"node_started\"") && !l.contains("\"torn_tail_bytes\":0")
            })
            .count();
        m.stop(0);
        m.node_env.insert(0, vec![("PATCHMESH_TEST_AUDIT_FLOOD".into(), "1".into())]);
    }
    eprintln!("torn tails cut on restart: {torn_seen} of 4 kills; entries {last_seq}");
}
