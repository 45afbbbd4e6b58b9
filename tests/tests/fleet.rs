//! Running patchmesh on real fleets: an MSP's tenants on one LAN, managed from one workstation.

use patchmesh_tests::{serial, wait_for, Mesh};
use std::process::Command;
use std::time::Duration;

/// Runs the CLI with the test's contexts file.
fn cli_env(xdg: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(patchmesh_tests::binary());
    c.args(args).env("XDG_CONFIG_HOME", xdg).env_remove("PATCHMESH_CONFIG");
    c.env_remove("PATCHMESH_CONTEXT").env_remove("PATCHMESH_ADMIN_KEY");
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(std::process::Stdio::null()).output().expect("running patchmesh")
}

fn ok(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// Two meshes (own genesis, own keys) on one loopback LAN with mDNS on, and a node of one
/// pointed straight at the other: no connection, object or payload byte crosses, the stray
/// node is refused in the transport handshake, and one workstation reads both (and a dead
/// third tenant) with `--all-contexts`.
#[test]
fn tenants_on_one_lan_stay_apart_and_one_workstation_reads_them_all() {
    let _serial = serial();
    let mut a = Mesh::new("tenant-a", 2, 1);
    let mut b = Mesh::new("tenant-b", 3, 1);
    a.mdns = true;
    b.mdns = true;
    a.start_all();
    b.start(0);
    b.start(1);
    // Node 2 of tenant b is pointed at tenant a's first node only.
    b.bootstrap = a.bootstrap.clone();
    b.start(2);

    let payload = a.root.0.join("a-only.bin");
    std::fs::write(&payload, vec![7u8; 300_000]).unwrap();
    let a_content = a.publish_file(0, "a-only", &payload);
    assert!(b.publish(0, "b-only").status.success());
    // Tenant a's payload reaches its other node; the stray b node has tried a by then.
    a.await_payload(&a_content, Duration::from_secs(60)).expect("a's payload spreads in a");
    let refused = wait_for(Duration::from_secs(30), || {
        let n = a.status(0).handshakes_refused;
        (n > 0).then_some(n)
    });
    assert!(refused.is_some(), "tenant a's node saw no refused handshake from b's node");

    let a_nodes: Vec<&str> = a.nodes.iter().map(|n| n.key.as_str()).collect();
    let b_nodes: Vec<&str> = b.nodes.iter().map(|n| n.key.as_str()).collect();
    for (mesh, own, name, other_patch) in
        [(&a, &a_nodes, "a", "b-only"), (&b, &b_nodes, "b", "a-only")]
    {
        for i in 0..mesh.nodes.len() {
            for p in mesh.peers(i) {
                let node = p.node.clone().unwrap_or_default();
                assert!(
                    own.contains(&node.as_str()),
                    "tenant {name} node {i} is connected to {node}"
                );
            }
            let names = mesh.catalog_names(i);
            assert!(
                !names.iter().any(|n| n == other_patch),
                "tenant {name} node {i} holds {names:?}"
            );
            let s = mesh.status(i);
            assert_eq!(s.mesh, format!("tenant-{name}"));
            assert!(
                s.rejected.is_empty(),
                "tenant {name} node {i} was sent objects: {:?}",
                s.rejected
            );
        }
    }
    for i in 0..b.nodes.len() {
        assert!(!b.contents(i).contains_key(&a_content), "tenant b node {i} holds a's payload");
    }
    assert!(b.peers(2).is_empty(), "the stray node connected to someone");

    // One workstation, three contexts: a, b and a tenant whose node is down.
    let xdg = a.root.0.join("xdg");
    let dead = a.root.0.join("dead.toml");
    std::fs::write(
        &dead,
        "data_dir = \"nowhere\"\nkey = \"k\"\ngenesis = \"g\"\nadmission = \"a\"\n",
    )
    .unwrap();
    for (name, cfg) in [
        ("acme", a.nodes[0].config()),
        ("globex", b.nodes[0].config()),
        ("initech", dead.display().to_string()),
    ] {
        let out = cli_env(&xdg, &["context", "add", name, "--config", &cfg], &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let all = cli_env(&xdg, &["--all-contexts", "status", "--json"], &[]);
    assert_eq!(all.status.code(), Some(5), "{}", String::from_utf8_lossy(&all.stderr));
    let v: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    let tenants = v["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 3);
    let by = |n: &str| tenants.iter().find(|t| t["context"] == n).unwrap().clone();
    assert_eq!(by("acme")["result"]["mesh"], "tenant-a");
    assert_eq!(by("globex")["result"]["mesh"], "tenant-b");
    assert_eq!(by("initech")["ok"], false);
    assert_eq!(by("initech")["exit_code"], 3);
    let why = by("initech")["error"].as_str().unwrap().to_string();
    assert!(why.contains("nowhere") || why.contains("dead.toml"), "{v}");

    // Writing commands are refused across contexts.
    let refused = cli_env(&xdg, &["--all-contexts", "rollout", "abort", "x"], &[]);
    assert_eq!(refused.status.code(), Some(2));

    // Precedence: flag > environment > context > default, and each origin is reported.
    let current = ok(&cli_env(&xdg, &["status", "--json"], &[]));
    assert_eq!(current["mesh"], "tenant-a", "the first context added is the current one");
    let by_flag = ok(&cli_env(&xdg, &["--context", "globex", "status", "--json"], &[]));
    assert_eq!(by_flag["mesh"], "tenant-b");
    let env = [("PATCHMESH_CONTEXT", "globex")];
    assert_eq!(ok(&cli_env(&xdg, &["status", "--json"], &env))["mesh"], "tenant-b");
    let a0 = a.nodes[0].config();
    let flag_wins = ok(&cli_env(&xdg, &["status", "--json", "--config", &a0], &env));
    assert_eq!(flag_wins["mesh"], "tenant-a");
    let view = ok(&cli_env(&xdg, &["config", "view", "--show-origin", "--json"], &env));
    assert_eq!(view["context"]["value"], "globex");
    assert_eq!(view["context"]["origin"]["env"], "PATCHMESH_CONTEXT");
    assert_eq!(view["config"]["value"], b.nodes[0].config());
    assert_eq!(view["config"]["origin"]["context"], "globex");
    let unknown = cli_env(&xdg, &["--context", "nope", "status"], &[]);
    assert_eq!(unknown.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no context \"nope\""));
}
