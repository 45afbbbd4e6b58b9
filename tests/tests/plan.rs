//! `patchmesh rollout plan` on real node processes: the fleet a node exports has the live
//! fleet's shape (sites, counts, zones, labels), the rehearsal predicts every ring, and the
//! checks before signing refuse a selector or ring that holds no node.

use patchmesh_node::control::{FleetView, PatchAddOutput, PlanOutput, RolloutCreateOutput};
use patchmesh_sim::rehearsal::Rehearsal;
use patchmesh_tests::{serial, wait_for, Mesh};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn a_rehearsal_exports_the_live_fleet_and_predicts_each_ring_and_the_checks_refuse_empty_rings() {
    let _guard = serial();
    // Six nodes in two sites (even: site0, odd: site1); node 1 is the canary (ring=canary),
    // the rest ring=main. Site1's nodes live in Tokyo, site0's in Berlin.
    let mut m = Mesh::new("plan", 6, 2);
    for i in 0..6 {
        let zone = if i % 2 == 1 { "Asia/Tokyo" } else { "Europe/Berlin" };
        m.node_config.insert(i, format!("time_zone = \"{zone}\"\n"));
    }
    m.start_all();
    // Node 0 knows its own site from records and site1 from its summary (with its shape, and
    // the least free disk space its members report).
    let fleet = wait_for(WAIT, || {
        let out = m.cli_at(0, &["fleet", "--json"]);
        let v: FleetView = serde_json::from_slice(&out.stdout).ok()?;
        let complete = v.sites.len() == 2
            && v.sites.iter().all(|s| {
                s.members == 3
                    && s.min_free_disk_bytes.is_some_and(|b| b > 0)
                    && s.kinds.iter().all(|k| !k.zone.is_empty())
            });
        complete.then_some(v)
    });
    let fleet = fleet.unwrap_or_else(|| panic!("node 0 never knew the whole fleet:\n{}", m.log(0)));
    assert_eq!(fleet.sites[0].site, "site0");
    assert!(fleet.sites[0].from_records);
    assert!(!fleet.sites[1].from_records, "site1 is read from its summary");

    let file = m.root.0.join("p.bin");
    std::fs::write(&file, b"planned").unwrap();
    let out = m.cli_at(
        0,
        &[
            "patch",
            "add",
            file.to_str().unwrap(),
            "--name",
            "p",
            "--executor",
            "command",
            "--install",
            "true",
            "--rollback",
            "true",
            "--admin-key",
            &m.admin_key(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let content = serde_json::from_slice::<PatchAddOutput>(&out.stdout).unwrap().content_id;
    let export = m.root.0.join("plan.toml");
    let plan = |extra: &[&str]| {
        let mut args = vec![
            "rollout",
            "plan",
            "--patch",
            &content,
            "--soak-s",
            "2",
            "--recheck-s",
            "1",
            "--seeds",
            "3",
            "--json",
        ];
        args.extend_from_slice(extra);
        m.cli_at(0, &args)
    };
    let export_s = export.display().to_string();
    let out = plan(&["--ring", "canary:0:ring=canary", "--ring", "all:100", "--export", &export_s]);
    assert!(out.status.success(), "plan: {}", String::from_utf8_lossy(&out.stderr));
    let p: Rehearsal = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p.targeted_nodes, 6, "{p:#?}");
    assert_eq!(p.rings[0].nodes, 1, "one canary: {p:#?}");
    assert_eq!(p.rings[1].nodes, 5, "{p:#?}");
    for ring in &p.rings {
        assert_eq!(ring.finished_seeds, 3, "every seed finishes every ring: {p:#?}");
    }
    let canary_done = p.rings[0].done_ms.unwrap()[0];
    let all_done = p.rings[1].done_ms.unwrap()[0];
    assert!(canary_done >= 2_000, "the canary soaks 2 s before it is done: {p:#?}");
    assert!(all_done > canary_done, "ring all finishes after the canary: {p:#?}");
    assert!(p.violations.is_empty(), "{p:#?}");

    // The exported scenario is the live fleet's shape, and the simulator loads it.
    let s = patchmesh_sim_scenario(&export);
    assert_eq!(s.sites, 2);
    assert_eq!(s.nodes, 6);
    type Kinds = Vec<(usize, String, Option<String>)>;
    let shape: Vec<(String, Kinds)> = s
        .site
        .iter()
        .map(|site| {
            let mut kinds: Vec<_> = site
                .kinds
                .iter()
                .map(|k| (k.count, k.zone.clone(), k.labels.get("ring").cloned()))
                .collect();
            kinds.sort();
            (site.name.clone(), kinds)
        })
        .collect();
    let berlin = "Europe/Berlin".to_string();
    let tokyo = "Asia/Tokyo".to_string();
    assert_eq!(
        shape,
        vec![
            ("site0".to_string(), vec![(3, berlin, Some("main".into()))]),
            (
                "site1".to_string(),
                vec![(1, tokyo.clone(), Some("canary".into())), (2, tokyo, Some("main".into()))]
            ),
        ]
    );

    // With failures on every canary, the rehearsal predicts a halt in the canary ring and no
    // install outside it.
    let out = plan(&[
        "--ring",
        "canary:0:ring=canary",
        "--ring",
        "all:100",
        "--fail-label",
        "ring=canary",
        "--fail-fraction",
        "1",
    ]);
    assert!(out.status.success(), "plan: {}", String::from_utf8_lossy(&out.stderr));
    let p: Rehearsal = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p.halted_seeds, 3, "{p:#?}");
    assert_eq!(p.blast_radius_max, 0, "{p:#?}");
    assert!(p.halt_ms.unwrap()[0] < all_done, "{p:#?}");

    // The checks: a label typo targets nothing, a label ring nobody carries never passes its
    // gate; both are refused (by create too) unless --force, once node 0 has run long enough
    // to know every site (six summary periods: 12 s here); before, they are warnings.
    let settled = wait_for(WAIT, || {
        let out = m.cli_at(0, &["fleet", "--json"]);
        let v: FleetView = serde_json::from_slice(&out.stdout).ok()?;
        (v.uptime_ms >= 12_000).then_some(())
    });
    assert!(settled.is_some());
    let out = plan(&["--ring", "all:100", "--target-label", "ring=mian"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no node is targeted"), "{out:?}");
    let out = m.cli_at(
        0,
        &[
            "rollout",
            "create",
            "--patch",
            &content,
            "--ring",
            "canary:0:ring=canaries",
            "--ring",
            "all:100",
            "--admin-key",
            &m.admin_key(),
        ],
    );
    assert!(!out.status.success(), "create went ahead with an empty ring");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ring canary holds no node") && err.contains("--force"), "{err}");
    let out = plan(&["--ring", "canary:0:ring=canaries", "--ring", "all:100", "--force"]);
    assert!(out.status.success(), "--force goes ahead: {}", String::from_utf8_lossy(&out.stderr));

    // A signed rollout stuck on that empty ring: `plan --rollout` rehearses it as held and
    // says why it cannot move, beside its progress so far.
    let out = m.cli_at(
        0,
        &[
            "rollout",
            "create",
            "--patch",
            &content,
            "--ring",
            "canary:0:ring=canaries",
            "--ring",
            "all:100",
            "--force",
            "--admin-key",
            &m.admin_key(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = serde_json::from_slice::<RolloutCreateOutput>(&out.stdout).unwrap().rollout;
    let held = wait_for(WAIT, || {
        let out = m.cli_at(0, &["rollout", "plan", "--rollout", &id, "--seeds", "2", "--json"]);
        out.status.success().then(|| serde_json::from_slice::<PlanOutput<Rehearsal>>(&out.stdout))
    });
    let p = held.expect("node 0 rehearses the rollout it holds").unwrap();
    let progress = p.progress.as_ref().expect("the signed rollout's progress");
    assert_eq!(progress.rollout, id, "{p:#?}");
    let rings: Vec<&str> = progress.rings.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(rings, ["canary", "all"], "{p:#?}");
    assert!(
        p.findings
            .iter()
            .any(|f| f.level == "problem" && f.message.contains("ring canary holds no node")),
        "{p:#?}"
    );
    assert_eq!(p.rehearsal.rings[0].nodes, 0, "{p:#?}");
    // An unknown id is an error that says so.
    let out = m.cli_at(0, &["rollout", "plan", "--rollout", &"ab".repeat(32)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no rollout"), "{out:?}");
}

fn patchmesh_sim_scenario(path: &std::path::Path) -> patchmesh_sim::Scenario {
    patchmesh_sim::Scenario::load(path.to_str().unwrap())
        .unwrap_or_else(|e| panic!("the exported scenario does not load: {e}"))
}
