//! Rollouts on real node processes: the demo end to end, kill -9 at every journal step, a hung
//! install, a skewed clock, a rollout signed by someone who is not an admin, and a dpkg rollback
//! after garbage collection with no peer to fetch from, and one install per site at a time.

use patchmesh_node::control::{
    AdminShowOutput, DemoReport, DryRunOutput, GcView, PatchAddOutput, RolloutCreateOutput,
    RolloutStatusOutput, RolloutView,
};
use patchmesh_node::report::{ComplianceReport, SignedReport};
use patchmesh_tests::{binary, cli, ensure_tools, serial, wait_for, Mesh, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

fn rollouts(m: &Mesh, i: usize) -> Option<RolloutStatusOutput> {
    let out = m.cli_at(i, &["rollout", "status", "--json"]);
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("rollout status --json parses"))
}

fn rollout_view(m: &Mesh, i: usize, id: &str) -> Option<RolloutView> {
    rollouts(m, i)?.rollouts.into_iter().find(|r| r.id == id)
}

fn target(m: &Mesh, i: usize) -> PathBuf {
    m.nodes[i].dir.join("data").join("app").join("app.bin")
}

/// Imports `body` at node `i` as a file patch replacing `{data_dir}/app/app.bin`.
fn add_patch(m: &Mesh, i: usize, body: &[u8], extra: &[&str]) -> String {
    add_patch_as(m, i, body, extra, &m.admin_key())
}

/// [`add_patch`] signed with `admin`.
fn add_patch_as(m: &Mesh, i: usize, body: &[u8], extra: &[&str], admin: &str) -> String {
    let file = m.root.0.join(format!("payload-{}.bin", blake3::hash(body).to_hex()));
    std::fs::write(&file, body).unwrap();
    let mut args = vec![
        "patch",
        "add",
        file.to_str().unwrap(),
        "--name",
        "app",
        "--version",
        "test",
        "--install",
        "{data_dir}/app/app.bin",
        "--timeout-ms",
        "20000",
    ];
    args.extend_from_slice(extra);
    args.extend(["--admin-key", admin, "--json"]);
    let out = m.cli_at(i, &args);
    assert!(out.status.success(), "patch add: {}", String::from_utf8_lossy(&out.stderr));
    let v: PatchAddOutput = serde_json::from_slice(&out.stdout).unwrap();
    v.content_id
}

fn create(m: &Mesh, i: usize, content: &str, rings: &[&str]) -> String {
    let out = try_create(m, i, content, rings, &[], &m.admin_key());
    assert!(out.status.success(), "rollout create: {}", String::from_utf8_lossy(&out.stderr));
    let v: RolloutCreateOutput = serde_json::from_slice(&out.stdout).unwrap();
    v.rollout
}

/// `rollout create` at node `i` with `extra` arguments, signed with `admin`.
fn try_create(
    m: &Mesh,
    i: usize,
    content: &str,
    rings: &[&str],
    extra: &[&str],
    admin: &str,
) -> std::process::Output {
    let mut args = vec![
        "rollout",
        "create",
        "--patch",
        content,
        "--soak-s",
        "1",
        "--recheck-s",
        "1",
        "--min-success",
        "1.0",
    ];
    for r in rings {
        args.extend(["--ring", r]);
    }
    args.extend_from_slice(extra);
    args.extend(["--admin-key", admin, "--json"]);
    m.cli_at(i, &args)
}

fn local_step(m: &Mesh, i: usize, id: &str) -> Option<String> {
    rollout_view(m, i, id)?.local.map(|l| l.step)
}

#[test]
fn the_demo_remediates_a_finding_with_a_good_patch_and_halts_a_bad_one_with_no_blast_radius() {
    let _guard = serial();
    ensure_tools(&["pdftotext", "pdfinfo"]);
    let dir = TempDir::new("demo-report");
    let report_dir = dir.0.join("report");
    let out = Command::new(binary())
        .args([
            "demo",
            "--nodes",
            "6",
            "--sites",
            "2",
            "--payload-bytes",
            "262144",
            "--soak-s",
            "1",
            "--json",
        ])
        .args(["--report-dir", &report_dir.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "demo failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: DemoReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.blast_radius, 0, "{v:?}");
    assert_eq!(v.nodes_on_good_version, 6, "{v:?}");
    assert!(v.ok, "{v:?}");
    let rings = &v.rings;
    assert_eq!(rings.len(), 3);
    let targeted: u64 = rings.iter().map(|r| r.targeted).sum();
    let succeeded: u64 = rings.iter().map(|r| r.succeeded).sum();
    assert_eq!((targeted, succeeded), (6, 6), "{v:?}");
    // Each rollout was rehearsed first: the rehearsal's rings (by label: exact) hold the
    // nodes the real ones held, it predicted when each finished, and for the bad patch a
    // halt with nothing installed outside the canary ring.
    for r in rings.iter().chain(&v.bad.rings) {
        assert_eq!(r.predicted_targeted, Some(r.targeted), "{v:?}");
    }
    assert!(rings.iter().all(|r| r.predicted_ms.is_some()), "{v:?}");
    assert!(v.halt_predicted_ms.is_some(), "{v:?}");
    assert_eq!(v.blast_radius_predicted, Some(0), "{v:?}");
    let bad = &v.bad.rings;
    // The canary gate allows no failure: the first failed canary halts the rollout, and a
    // canary that had not started by then never installs. Every canary that installed failed
    // verification and rolled back.
    assert!(bad[0].failed >= 1, "a canary failed verification: {v:?}");
    assert_eq!(bad[0].rolled_back, bad[0].failed, "every failed canary rolled back: {v:?}");
    assert!(bad[1..].iter().all(|r| r.failed == 0 && r.rolled_back == 0), "{v:?}");
    assert!(v.wan_ratio_max <= 1.05, "{v:?}");
    // The good patch remediated the demo's finding: every node exposed before, none after.
    assert_eq!((v.intel.nodes_exposed_before, v.intel.nodes_exposed_after), (6, 0), "{v:?}");
    assert_eq!(v.intel.due, "3d", "KEV, automatable, total impact: {v:?}");
    demo_reports(&v, &dir);
    // The demo's webhook receiver saw the halt once, and one failure event per failed canary,
    // every delivery signed by a node of the mesh.
    let w = &v.webhook;
    assert_eq!(w.halt_deliveries, 1, "{w:?}");
    assert_eq!(w.unsigned, 0, "{w:?}");
    let failed: u64 = v.bad.rings.iter().map(|r| r.failed).sum();
    assert_eq!(
        w.distinct_events.get("patchmesh.install_failed").copied().unwrap_or(0) as u64,
        failed,
        "{w:?}"
    );
}

/// The demo's signed reports: each verifies, a changed byte is refused, the PDF opens and says
/// the summary figures, the HTML loads nothing from elsewhere, and the remediated finding is
/// closed within SLA while the bad rollout shows its halt and rollbacks.
fn demo_reports(v: &DemoReport, dir: &TempDir) {
    let path = |ext: &str| {
        v.report_paths
            .iter()
            .find(|p| p.ends_with(ext))
            .unwrap_or_else(|| panic!("no {ext} in {v:?}"))
            .clone()
    };
    let verify = |p: &str| cli(&["report", "verify", p]);
    for p in &v.report_paths {
        if p.ends_with(".csv") {
            let out = verify(p);
            assert!(
                !out.status.success()
                    && String::from_utf8_lossy(&out.stderr).contains("carries no signature")
            );
            continue;
        }
        let out = verify(p);
        assert!(out.status.success(), "{p}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: "));
    }
    // The JSON, read as an auditor would.
    let text = std::fs::read_to_string(path(".json")).unwrap();
    let file: SignedReport<ComplianceReport> = serde_json::from_str(&text).unwrap();
    let r = &file.report;
    let roles: Vec<&str> = file.signatures.iter().map(|s| s.role.as_str()).collect();
    assert_eq!(roles, ["node", "admin"]);
    let fixed: Vec<_> = r.findings.iter().filter(|f| f.cve == "CVE-2026-41234").collect();
    assert_eq!(fixed.len(), 3, "the site's 3 nodes list the remediated finding: {r:#?}");
    for f in &fixed {
        assert_eq!(f.status, "closed", "{f:?}");
        assert_eq!(f.sla_met, Some(true), "{f:?}");
        assert_eq!(f.remediated_version.as_deref(), Some("2.0-1"), "{f:?}");
        assert!(f.remediated_at_ms.unwrap() >= f.first_seen_ms, "{f:?}");
        assert!(f.hostname.starts_with("branch-a-pos"), "{f:?}");
    }
    assert_eq!(r.summary.assets_admitted, 6);
    assert_eq!(r.summary.assets_listed, 3);
    let bad = r.rollouts.iter().find(|x| x.id == v.bad.rollout).unwrap();
    assert!(bad.state.starts_with("halted at ring 0"), "{bad:?}");
    let canaries_rolled_back: u64 = v.bad.rings.iter().map(|g| g.rolled_back).sum();
    assert_eq!(u64::from(bad.rolled_back), canaries_rolled_back, "{bad:?}");
    assert_eq!(r.basis.audit_checkpoints.len(), 3);

    // One byte changed: refused.
    let at = text.find("\"sla_met\":true").unwrap() + "\"sla_met\":".len();
    let tampered = dir.0.join("tampered.json");
    std::fs::write(&tampered, format!("{}false{}", &text[..at], &text[at + 4..])).unwrap();
    let out = verify(&tampered.display().to_string());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not verify"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The PDF opens and holds the summary figures.
    let pdf = path(".pdf");
    let info = Command::new("pdfinfo").arg(&pdf).output().unwrap();
    assert!(info.status.success(), "pdfinfo: {}", String::from_utf8_lossy(&info.stderr));
    assert!(String::from_utf8_lossy(&info.stdout).contains("Patch compliance report"));
    let txt = Command::new("pdftotext").args(["-layout", &pdf, "-"]).output().unwrap();
    let txt = String::from_utf8_lossy(&txt.stdout);
    let s = &r.summary;
    assert!(txt.contains(&format!("Open findings: {}", s.open)), "{txt}");
    assert!(txt.contains(&format!("Remediated in period: {}", s.closed_in_period)), "{txt}");
    assert!(
        txt.contains("CVE-2026-41234") && txt.contains("PCI DSS v4.0.1") && txt.contains("6.3.3"),
        "{txt}"
    );

    // The HTML is one file: nothing loaded from elsewhere, no script that runs.
    let html = std::fs::read_to_string(path(".html")).unwrap();
    for bad in ["src=", "href=\"http", "url(", "@import", "<link", "<script>", "<script src"] {
        assert!(!html.contains(bad), "the HTML report refers to {bad}");
    }
    assert!(html.contains("CVE-2026-41234") && html.contains("<svg"));
}

/// One node, one ring; the node is killed with SIGKILL right after its journal reached `step`,
/// restarted, and must end in old or new — matching what its journal says.
fn crash_at(step: &str, bad: bool) {
    let mut m = Mesh::new(&format!("crash-{step}"), 1, 1);
    m.node_env.insert(0, vec![("PATCHMESH_TEST_CRASH_AT".into(), step.into())]);
    m.start(0);
    std::fs::create_dir_all(target(&m, 0).parent().unwrap()).unwrap();
    std::fs::write(target(&m, 0), b"old version\n").unwrap();
    let new_body = format!("new version for {step}\n").into_bytes();
    let verify: &[&str] = if bad { &["--verify", "exit 1"] } else { &[] };
    let content = add_patch(&m, 0, &new_body, verify);
    // The node may die while it answers (its own submit drives it straight into the step),
    // so the rollout's id is read back after the restart.
    let admin = m.admin_key();
    let _ = m.cli_at(
        0,
        &[
            "rollout",
            "create",
            "--patch",
            &content,
            "--ring",
            "all:100",
            "--soak-s",
            "1",
            "--recheck-s",
            "1",
            "--admin-key",
            &admin,
        ],
    );
    let child = m.nodes[0].child.as_mut().unwrap();
    let exited = wait_for(WAIT, || child.try_wait().ok().flatten());
    assert!(exited.is_some(), "node never reached {step}:\n{}", m.log(0));
    m.nodes[0].child = None;
    assert!(
        m.log(0).contains("PATCHMESH_TEST_CRASH_AT: killing this node"),
        "died otherwise:\n{}",
        m.log(0)
    );
    m.node_env.clear();
    m.start(0);
    let status = rollouts(&m, 0).expect("the node answers");
    let id = status.rollouts.first().expect("the rollout survived the crash").id.clone();
    let want_terminal = if bad { "rolled_back" } else { "committed" };
    let end = wait_for(WAIT, || {
        local_step(&m, 0, &id)
            .filter(|s| matches!(s.as_str(), "committed" | "rolled_back" | "failed"))
    });
    let end =
        end.unwrap_or_else(|| panic!("no terminal step after crash at {step}:\n{}", m.log(0)));
    assert_eq!(end, want_terminal, "crash at {step}");
    let on_disk = std::fs::read(target(&m, 0)).unwrap();
    let expected: &[u8] = if end == "committed" { &new_body } else { b"old version\n" };
    assert_eq!(
        on_disk, expected,
        "crash at {step}: the target is neither consistently old nor new"
    );
}

#[test]
fn kill_9_at_every_journal_step_ends_old_or_new() {
    let _guard = serial();
    for step in ["fetching", "staging", "installing", "verifying", "soaking", "committed"] {
        crash_at(step, false);
    }
    for step in ["installing", "verifying", "rolling_back", "rolled_back"] {
        crash_at(step, true);
    }
}

#[test]
fn a_hanging_install_times_out_and_rolls_back() {
    let _guard = serial();
    let mut m = Mesh::new("hang", 1, 1);
    m.start(0);
    let marker = m.nodes[0].dir.join("data").join("rolled-back");
    let content = add_patch(&m, 0, b"payload", &[]);
    // Re-publish as a command patch: an install that never finishes within its 1 s limit.
    let admin = m.admin_key();
    let file = m.root.0.join("cmd.bin");
    std::fs::write(&file, b"command payload").unwrap();
    let out = m.cli_at(
        0,
        &[
            "patch",
            "add",
            file.to_str().unwrap(),
            "--name",
            "hang",
            "--executor",
            "command",
            "--install",
            "sleep 600",
            "--rollback",
            "touch {data_dir}/rolled-back",
            "--timeout-ms",
            "1000",
            "--admin-key",
            &admin,
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cmd_content = serde_json::from_slice::<PatchAddOutput>(&out.stdout).unwrap().content_id;
    assert_ne!(cmd_content, content);
    let id = create(&m, 0, &cmd_content, &["all:100"]);
    let end =
        wait_for(WAIT, || local_step(&m, 0, &id).filter(|s| s == "rolled_back" || s == "failed"));
    assert_eq!(end.as_deref(), Some("rolled_back"), "{}", m.log(0));
    let view = rollout_view(&m, 0, &id).unwrap();
    assert!(view.local.as_ref().is_some_and(|l| l.failed), "{view:?}");
    assert!(marker.exists(), "the rollback command ran");
    let audit =
        std::fs::read_to_string(m.nodes[0].dir.join("data").join("audit").join("current.log"))
            .unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"type\":\"step_result\"") && l.contains("\"timed_out\":true")),
        "audit log records the timeout:\n{audit}"
    );
    // The halt follows from its own failure report (max failures 0).
    assert_eq!(view.state(), "halted", "{view:?}");
}

fn wait_halted(m: &Mesh, nodes: &[usize], id: &str) -> bool {
    wait_for(WAIT, || {
        nodes
            .iter()
            .all(|i| rollout_view(m, *i, id).is_some_and(|v| v.state() == "halted"))
            .then_some(())
    })
    .is_some()
}

#[test]
fn a_node_a_day_ahead_still_halts_and_a_non_admin_cannot_create_rollouts() {
    let _guard = serial();
    let mut m = Mesh::new("skew", 4, 2);
    m.node_config.insert(3, "clock_offset_ms = 86400000\n".into());
    m.start_all();
    for i in 0..4 {
        std::fs::create_dir_all(target(&m, i).parent().unwrap()).unwrap();
        std::fs::write(target(&m, i), b"old\n").unwrap();
    }
    let content = add_patch(&m, 0, b"bad build\n", &["--verify", "exit 1"]);
    // Someone with a node key but no admin key.
    let outsider = m.root.0.join("outsider.key");
    let kg = Command::new(binary())
        .args(["node", "keygen", "--out", outsider.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(kg.status.success());
    let out = m.cli_at(
        0,
        &[
            "rollout",
            "create",
            "--patch",
            &content,
            "--ring",
            "all:100",
            "--admin-key",
            outsider.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "a non-admin rollout is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        rollouts(&m, 0).expect("the node answers").rollouts.len(),
        0,
        "nothing was published"
    );

    let id = create(&m, 0, &content, &["canary:0:ring=canary", "all:100"]);
    assert!(wait_halted(&m, &[0, 1, 2, 3], &id), "not every node halted:\n{}", m.log(3));
    let end = wait_for(WAIT, || local_step(&m, 1, &id).filter(|s| s == "rolled_back"));
    assert!(end.is_some(), "the canary rolled back:\n{}", m.log(1));
    for i in [0, 2, 3] {
        let v = rollout_view(&m, i, &id).unwrap();
        assert!(v.local.is_none(), "node {i} outside the canary ring started an install: {v:?}");
        assert_eq!(std::fs::read(target(&m, i)).unwrap(), b"old\n");
    }
    assert_eq!(
        std::fs::read(target(&m, 1)).unwrap(),
        b"old\n",
        "the canary is back on the old file"
    );
    let _ = Path::new(".");
}

/// Builds `pm-gc_<version>.deb` (installs `/opt/pm-gc/version`) under `base`.
fn deb(base: &Path, version: &str) -> PathBuf {
    let tree = base.join(format!("deb-tree-{version}"));
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(tree.join("opt/pm-gc")).unwrap();
    let control = format!(
        "Package: pm-gc\nVersion: {version}\nArchitecture: all\nMaintainer: Test <test@example.org>\n\
         Description: rollback after gc\n"
    );
    std::fs::write(tree.join("DEBIAN/control"), control).unwrap();
    std::fs::write(tree.join("opt/pm-gc/version"), version).unwrap();
    let out_file = base.join(format!("pm-gc_{version}.deb"));
    let built = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .args([&tree, &out_file])
        .output()
        .unwrap();
    assert!(built.status.success(), "dpkg-deb: {}", String::from_utf8_lossy(&built.stderr));
    out_file
}

fn publish_deb(m: &Mesh, file: &Path, version: &str, verify: &str) -> String {
    let admin = m.admin_key();
    let out = m.cli_at(
        0,
        &[
            "patch",
            "add",
            file.to_str().unwrap(),
            "--name",
            "pm-gc",
            "--version",
            version,
            "--executor",
            "dpkg",
            "--verify",
            verify,
            "--timeout-ms",
            "60000",
            "--admin-key",
            &admin,
            "--json",
        ],
    );
    assert!(out.status.success(), "patch add: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<PatchAddOutput>(&out.stdout).unwrap().content_id
}

#[test]
fn a_dpkg_rollback_after_gc_reinstalls_the_previous_deb_with_no_peer_to_fetch_from() {
    let _guard = serial();
    // One node and no peer: whatever the rollback needs must already be on this machine.
    let mut m = Mesh::new("dpkg-gc", 1, 1);
    let root = m.nodes[0].dir.join("dpkg-root");
    m.node_config.insert(0, format!("dpkg_root = \"{}\"\n", root.display()));
    m.start(0);
    let version_file = root.join("opt/pm-gc/version");
    let v1 = publish_deb(&m, &deb(&m.root.0, "1.0"), "1.0", "true");
    let id = create(&m, 0, &v1, &["all:100"]);
    let end = wait_for(WAIT, || {
        local_step(&m, 0, &id).filter(|s| s == "committed" || s == "rolled_back")
    });
    assert_eq!(end.as_deref(), Some("committed"), "{}", m.log(0));
    assert_eq!(std::fs::read_to_string(&version_file).unwrap(), "1.0");

    // 2.0 installs but fails verification; before its rollout, collect garbage.
    let v2 = publish_deb(&m, &deb(&m.root.0, "2.0"), "2.0", "exit 1");
    let gc: GcView = patchmesh_tests::cli_json(&[
        "content",
        "gc",
        "--config",
        &m.nodes[0].config(),
        "--yes",
        "--json",
    ]);
    assert!(!gc.dry_run);
    assert!(
        gc.removed.iter().all(|r| r.content_id != v1),
        "gc removed the installed version's .deb, which a rollback reinstalls: {gc:?}"
    );
    let held = m.contents(0);
    assert!(held.get(&v1).is_some_and(|c| c.complete), "1.0's .deb is still held: {held:?}");

    let id2 = create(&m, 0, &v2, &["all:100"]);
    let end =
        wait_for(WAIT, || local_step(&m, 0, &id2).filter(|s| s == "rolled_back" || s == "failed"));
    assert_eq!(end.as_deref(), Some("rolled_back"), "{}", m.log(0));
    assert_eq!(
        std::fs::read_to_string(&version_file).unwrap(),
        "1.0",
        "the rollback reinstalled 1.0 from the node's own store"
    );
    assert!(m.peers(0).is_empty(), "the node never had a peer to fetch from");
}

/// A role scoped to one site, on real nodes: its admin rolls out to its site, every node refuses
/// it a rollout to the other site (whose nodes run the same inventory, so only the admitted
/// site tells them apart), and once the role is removed every node refuses its changes.
#[test]
fn a_site_admin_rolls_out_to_its_site_only_and_loses_it_with_its_role() {
    let _guard = serial();
    let mut m = Mesh::new("roles", 4, 2);
    m.start_all();
    for i in 0..4 {
        std::fs::create_dir_all(target(&m, i).parent().unwrap()).unwrap();
    }
    let key_file = m.root.0.join("site0-admin.key").display().to_string();
    let k: patchmesh_node::control::KeygenOutput = patchmesh_tests::cli_json(&[
        "admin",
        "keygen",
        "--out",
        &key_file,
        "--unencrypted",
        "--json",
    ]);
    let root = m.mesh_dir().join("root.key").display().to_string();
    let version_everywhere =
        |v: u64| wait_for(WAIT, || (0..4).all(|i| m.status(i).trust_version == v).then_some(()));
    let add = m.cli_at(
        1,
        &[
            "admin",
            "role",
            "add",
            "site0-ops",
            "--key",
            &k.public_key,
            "--permission",
            "publish",
            "--permission",
            "control",
            "--permission",
            "approve",
            "--site",
            "site0",
            "--root-key",
            &root,
            "--json",
        ],
    );
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    assert!(version_everywhere(2).is_some(), "the role did not spread");
    let show: AdminShowOutput =
        serde_json::from_slice(&m.cli_at(3, &["admin", "show", "--json"]).stdout).unwrap();
    let names: Vec<&str> = show.roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["admins", "site0-ops"], "{show:?}");

    // Its own site: nodes 0 and 2. Every node runs the same inventory (this machine's), so the
    // package clause holds everywhere; the certificate's site alone keeps site1 out.
    let content = add_patch_as(&m, 0, b"site0 only", &[], &key_file);
    let to_site0 = ["--target-site", "site0", "--target-package", "dpkg >= 0"];
    // A dry run prints what would be signed and publishes nothing.
    let mut dry = to_site0.to_vec();
    dry.push("--dry-run");
    let out = try_create(&m, 0, &content, &["all:100"], &dry, &key_file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: DryRunOutput = serde_json::from_slice(&out.stdout).unwrap();
    assert!(printed.dry_run);
    assert!(printed.edits[0].key.starts_with("rollout/"), "{printed:?}");
    assert!(rollouts(&m, 0).unwrap().rollouts.is_empty(), "a dry run published a rollout");
    let out = try_create(&m, 0, &content, &["all:100"], &to_site0, &key_file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = serde_json::from_slice::<RolloutCreateOutput>(&out.stdout).unwrap().rollout;
    let done = wait_for(WAIT, || {
        [0, 2].iter().all(|&i| local_step(&m, i, &id).as_deref() == Some("committed")).then_some(())
    });
    assert!(done.is_some(), "site0 did not install: {:?}", rollouts(&m, 0));
    for i in [1, 3] {
        assert_eq!(local_step(&m, i, &id), None, "site1 node {i} took part");
        assert_eq!(std::fs::read(target(&m, i)).ok(), None, "site1 node {i} installed it");
    }
    assert_eq!(std::fs::read(target(&m, 2)).unwrap(), b"site0 only");

    // The other site, or every site: refused at every node.
    for i in 0..4 {
        for extra in [&["--target-site", "site1"][..], &[][..]] {
            let out = try_create(&m, i, &content, &["all:100"], extra, &key_file);
            assert_eq!(out.status.code(), Some(4), "node {i} accepted {extra:?}");
            let why = String::from_utf8_lossy(&out.stderr);
            assert!(why.contains("publish"), "{why}");
        }
    }

    // Remove the role: the key stays an admin but may do nothing, on every node.
    let remove =
        m.cli_at(2, &["admin", "role", "remove", "site0-ops", "--root-key", &root, "--yes"]);
    assert!(remove.status.success(), "{}", String::from_utf8_lossy(&remove.stderr));
    assert!(version_everywhere(3).is_some(), "the removal did not spread");
    for i in 0..4 {
        let out = try_create(&m, i, &content, &["all:100"], &to_site0, &key_file);
        assert_eq!(out.status.code(), Some(4), "node {i} accepted a change of a removed role");
    }
}

/// With `[notice]`, a machine where someone is logged in runs the notice hook before it
/// installs and waits; `patchmesh defer` (over the user socket, no admin token) puts the
/// install off within the rollout's allowance and never past its deadline, and the install
/// then runs. The hook is told each new install time.
#[test]
fn logged_in_users_are_told_before_an_install_and_may_defer_it_up_to_the_deadline() {
    let _guard = serial();
    let mut m = Mesh::new("notice", 1, 1);
    let dir = m.nodes[0].dir.clone();
    let notices = dir.join("notices.txt");
    let socket = dir.join("user.sock");
    m.node_tables.insert(
        0,
        format!(
            "[notice]\nlead_s = 2\nusers_command = [\"echo\", \"alice pts/0\"]\n\
             hook = [\"sh\", \"-c\", \"echo \\\"$PATCHMESH_INSTALL_AT $PATCHMESH_DEFERRALS_LEFT\\\" >> {}\"]\n\
             user_socket = \"{}\"\n",
            notices.display(),
            socket.display()
        ),
    );
    m.start_all();
    std::fs::create_dir_all(target(&m, 0).parent().unwrap()).unwrap();
    let s = socket.display().to_string();
    let defer = |extra: &[&str]| {
        let mut args = vec!["defer", "--socket", s.as_str()];
        args.extend_from_slice(extra);
        cli(&args)
    };
    // Nothing waits yet.
    let out = defer(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no install is waiting"));

    let deadline_ms =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            / 1000
            * 1000
            + 25_000) as u64;
    let deadline = jiff::Timestamp::from_millisecond(deadline_ms as i64).unwrap().to_string();
    let content = add_patch(&m, 0, b"told first", &[]);
    let extra = ["--allow-deferrals", "2", "--defer-each", "1h", "--deadline", deadline.as_str()];
    let out = try_create(&m, 0, &content, &["all:100"], &extra, &m.admin_key());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = serde_json::from_slice::<RolloutCreateOutput>(&out.stdout).unwrap().rollout;

    let read = || std::fs::read_to_string(&notices).unwrap_or_default();
    let first = wait_for(WAIT, || read().lines().next().map(str::to_string));
    let first = first.expect("the notice hook never ran");
    assert!(first.ends_with(" 2"), "two deferrals left at first: {first:?}");

    // One deferral: an hour would pass the deadline, so the install moves to the deadline.
    let out = defer(&["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: patchmesh_node::control::NoticeView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v.install_at_ms, v.deferrals_used, v.deferrals_allowed), (deadline_ms, 1, 2));
    assert_eq!(v.rollout, id);
    // It cannot move past the deadline, though a deferral is left.
    let out = defer(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("deadline"), "{out:?}");
    let list: Vec<patchmesh_node::control::NoticeView> =
        serde_json::from_slice(&defer(&["--list", "--json"]).stdout).unwrap();
    assert_eq!(list.len(), 1);
    // Still waiting: nothing installed before the (deferred) install time.
    assert_eq!(std::fs::read(target(&m, 0)).ok(), None, "installed before its time");
    assert_eq!(local_step(&m, 0, &id).as_deref(), Some("installing"));

    let done =
        wait_for(WAIT, || (local_step(&m, 0, &id).as_deref() == Some("committed")).then_some(()));
    assert!(done.is_some(), "the install never ran: {:?}", rollouts(&m, 0));
    assert_eq!(std::fs::read(target(&m, 0)).unwrap(), b"told first");
    let lines: Vec<String> = read().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let second = jiff::Timestamp::from_millisecond(deadline_ms as i64).unwrap().to_string();
    assert_eq!(lines[1], format!("{second} 1"), "the hook was told the new time");
}

#[test]
fn with_one_install_per_site_no_two_members_of_a_site_ever_install_at_once() {
    let _guard = serial();
    // Six nodes in two sites (even: site0, odd: site1), `--max-concurrent-per-site 1` (the
    // default). Each install logs its start and end around a 2 s sleep; within a site the
    // intervals must never overlap.
    let mut m = Mesh::new("site-limit", 6, 2);
    m.start_all();
    // Members rank each other by the records they hold: one whose record has never reached a
    // member cannot be counted by it. The nodes bootstrap from node 0 (site0), so the site1
    // members find each other a moment later; the rollout starts once every node holds its
    // site's three records, as in a running fleet.
    let known = wait_for(WAIT, || (0..6).all(|i| m.status(i).site_records == 3).then_some(()));
    assert!(
        known.is_some(),
        "site records never converged: {:?}",
        (0..6).map(|i| m.status(i).site_records).collect::<Vec<_>>()
    );
    let log = m.root.0.join("installs.log");
    let script = m.root.0.join("install.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"start $(date +%s%N) $1\" >> {log}\nsleep 2\necho \"end $(date +%s%N) $1\" >> {log}\n",
            log = log.display()
        ),
    )
    .unwrap();
    let file = m.root.0.join("limit.bin");
    std::fs::write(&file, b"one at a time").unwrap();
    let install = format!("sh {} {{data_dir}}", script.display());
    let out = m.cli_at(
        0,
        &[
            "patch",
            "add",
            file.to_str().unwrap(),
            "--name",
            "limit",
            "--executor",
            "command",
            "--install",
            &install,
            "--rollback",
            "true",
            "--timeout-ms",
            "20000",
            "--admin-key",
            &m.admin_key(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let content = serde_json::from_slice::<PatchAddOutput>(&out.stdout).unwrap().content_id;
    let id = create(&m, 0, &content, &["all:100"]);
    let all = wait_for(WAIT, || {
        (0..6).all(|i| local_step(&m, i, &id).as_deref() == Some("committed")).then_some(())
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(all.is_some(), "not every node committed:\n{text}\n{}", m.log(0));
    // (node, start, end) per install, from the log.
    let node_of = |dir: &str| (0..6).find(|i| m.nodes[*i].dir.join("data") == Path::new(dir));
    let mut runs: Vec<(usize, u128, u128)> = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [what, at, dir] = parts[..] else { panic!("log line {line:?}") };
        let node = node_of(dir).unwrap_or_else(|| panic!("unknown data dir {dir}"));
        let at: u128 = at.parse().unwrap();
        match what {
            "start" => runs.push((node, at, u128::MAX)),
            _ => runs.iter_mut().rev().find(|r| r.0 == node).unwrap().2 = at,
        }
    }
    assert_eq!(runs.len(), 6, "one install per node:\n{text}");
    for site in 0..2 {
        let mut own: Vec<_> = runs.iter().filter(|r| r.0 % 2 == site).collect();
        own.sort_by_key(|r| r.1);
        for w in own.windows(2) {
            assert!(
                w[1].1 >= w[0].2,
                "site{site}: node {} started {} ms before node {} ended:\n{text}",
                w[1].0,
                (w[0].2 - w[1].1) / 1_000_000,
                w[0].0
            );
        }
    }
}
