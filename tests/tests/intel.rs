//! Vulnerability intelligence end to end through the CLI: importing every source format
//! (fixtures written here in the real formats, plus the real CISA KEV catalog), Debian
//! matching on every hard case, risk and due classes, `explain`, bad input, and parity of
//! `patchmesh updates` with `apt list --upgradable` on this machine.

use patchmesh_node::control::{
    CatalogView, FleetVulnsOut, ImportOut, IntelView, RemoteFindingsView, VulnsOut,
};
use patchmesh_protocol::intel::apt::Update;
use patchmesh_protocol::intel::bundle::{Header, SourceInfo, SourceKind};
use patchmesh_protocol::intel::exception::ExceptionKind;
use patchmesh_protocol::intel::matching::Verdict;
use patchmesh_protocol::intel::report::{Assessed, FleetCve};
use patchmesh_protocol::intel::risk::{Due, DueInputs};
use patchmesh_protocol::intel::Origin;
use patchmesh_tests::{cli, cli_json, serial, wait_for, Mesh, TempDir};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const STATUS: &str = "\
Package: bsdutils
Status: install ok installed
Architecture: amd64
Source: util-linux (2.38.1-5+deb12u1)
Version: 1:2.38.1-5+deb12u1

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b7
Source: bash (5.2.15-2)

Package: libssl3
Status: install ok installed
Architecture: amd64
Source: openssl
Version: 3.0.15-1~deb12u1

Package: curl
Status: install ok installed
Architecture: amd64
Version: 7.88.1-10+deb12u5

Package: libcurl4
Status: install ok installed
Architecture: amd64
Source: curl
Version: 7.88.1-10+deb12u5

Package: openssh-server
Status: install ok installed
Architecture: amd64
Source: openssh
Version: 1:9.2p1-2+deb12u2

Package: libpolkit-gobject-1-0
Status: install ok installed
Architecture: amd64
Source: policykit-1
Version: 122-3

Package: foo
Status: install ok installed
Architecture: all
Version: 2.0-1~bpo12+1

Package: zlib1g
Status: install ok installed
Architecture: amd64
Source: zlib
Version: 1:1.2.13.dfsg-1

Package: removed-thing
Status: deinstall ok config-files
Architecture: amd64
Source: util-linux
Version: 1.0
";

/// `base` with `extra`'s fields added (replacing any of the same name).
fn with(mut base: Value, extra: Value) -> Value {
    let fields = base.as_object_mut().unwrap();
    for (k, v) in extra.as_object().into_iter().flatten() {
        fields.insert(k.clone(), v.clone());
    }
    base
}

fn rel(status: &str, fixed: Option<&str>, extra: Value) -> Value {
    let r = json!({"status": status, "urgency": "medium", "repositories": {"bookworm": "x"}});
    let r = match fixed {
        Some(f) => with(r, json!({"fixed_version": f})),
        None => r,
    };
    with(r, extra)
}

/// The Debian Security Tracker JSON, every hard case on one machine.
fn tracker() -> Value {
    json!({
        // Binary bsdutils has epoch 1: and another name; the source version is what counts.
        "util-linux": {"CVE-2024-28085": {"description": "wall escape sequences", "releases": {
            "bookworm": rel("resolved", Some("2.38.1-5+deb12u2"), json!({"repositories": {"bookworm-security": "2.38.1-5+deb12u2"}}))}}},
        // binNMU: binary 5.2.15-2+b7 from source 5.2.15-2, which is the fix.
        "bash": {
            "CVE-2022-3715": {"releases": {"bookworm": rel("resolved", Some("5.2.15-2"), json!({}))}},
            "CVE-2099-0001": {"releases": {"bookworm": rel("undetermined", None, json!({}))}}
        },
        "openssl": {
            // `~deb12u1` sorts before the fix 3.0.15-1.
            "CVE-2024-9143": {"releases": {"bookworm": rel("resolved", Some("3.0.15-1"), json!({}))}},
            "CVE-2024-0001": {"releases": {"bookworm": rel("resolved", Some("0"), json!({}))}},
            "CVE-2024-0002": {"releases": {"bookworm": rel("open", None, json!({"nodsa": "Minor issue", "nodsa_reason": "postponed"}))}},
            "CVE-2024-0003": {"releases": {"bookworm": rel("resolved", Some("3.0.16-1"), json!({"urgency": "unimportant"}))}},
            "TEMP-0000000-ABCDEF": {"releases": {"bookworm": rel("open", None, json!({}))}},
            "CVE-2024-0004": {"releases": {"bookworm": rel("resolved", Some("3.0 beta!"), json!({}))}}
        },
        "curl": {
            "CVE-2023-38545": {"releases": {"bookworm": rel("resolved", Some("7.88.1-10+deb12u4"), json!({}))}},
            "CVE-2024-2398": {"releases": {"bookworm": rel("resolved", Some("7.88.1-10+deb12u6"), json!({"repositories": {"bookworm-security": "7.88.1-10+deb12u6"}}))}}
        },
        // Release scoping: the trixie record must not hit this bookworm node.
        "openssh": {"CVE-2024-6387": {"releases": {
            "bookworm": rel("resolved", Some("1:9.2p1-2+deb12u3"), json!({"urgency": "high"})),
            "trixie": rel("resolved", Some("1:9.7p1-7"), json!({}))}}},
        "zlib": {"CVE-2023-45853": {"releases": {"trixie": rel("open", None, json!({}))}}},
        "policykit-1": {"CVE-2021-4034": {"releases": {"bookworm": rel("resolved", Some("122-4"), json!({"urgency": "high"}))}}},
        // A backport newer than the stable fix is fixed, not a false positive.
        "foo": {"CVE-2024-0010": {"releases": {"bookworm": rel("resolved", Some("1.5-1+deb12u1"), json!({}))}}}
    })
}

/// An OSV record and its id.
fn osv(id: &str, aliases: &[&str], pkg: &str, events: Value, extra: Value) -> (String, Value) {
    let r = json!({"id": id, "modified": "2026-01-01T00:00:00Z", "aliases": aliases,
        "affected": [{"package": {"ecosystem": "Debian:12", "name": pkg},
                      "ranges": [{"type": "ECOSYSTEM", "events": events}]}]});
    (id.to_string(), with(r, extra))
}

struct Fixture {
    dir: TempDir,
    root: PathBuf,
    bundle: String,
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A machine root: a dpkg status database and an os-release naming bookworm.
fn machine(root: &Path, status: &str) {
    write(&root.join("var/lib/dpkg/status"), status.as_bytes());
    write(
        &root.join("etc/os-release"),
        b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n",
    );
}

/// The import inputs in the real formats: tracker JSON, an OSV directory, the real KEV
/// catalog and a gzipped EPSS file.
fn inputs(dir: &Path) -> Vec<String> {
    write(&dir.join("tracker.json"), tracker().to_string().as_bytes());
    let osv_dir = dir.join("osv");
    let sev = |v: &str| json!({"severity": [{"type": "CVSS_V3", "score": v}]});
    let records = [
        osv(
            "DSA-5678-1",
            &["CVE-2024-2398"],
            "curl",
            json!([{"introduced": "0"}, {"fixed": "7.88.1-10+deb12u6"}]),
            sev("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:L"),
        ),
        // Disagrees with the tracker (which says fixed at deb12u4).
        osv(
            "DEBIAN-CVE-2023-38545",
            &[],
            "curl",
            json!([{"introduced": "0"}]),
            json!({"upstream": ["CVE-2023-38545"]}),
        ),
        osv(
            "CVE-2024-6387",
            &[],
            "openssh",
            json!([{"introduced": "0"}, {"fixed": "1:9.2p1-2+deb12u3"}]),
            sev("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H"),
        ),
        osv(
            "CVE-2021-4034",
            &[],
            "policykit-1",
            json!([{"introduced": "0"}, {"fixed": "122-4"}]),
            sev("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"),
        ),
        osv(
            "DSA-0000-1",
            &["CVE-2024-9143"],
            "openssl",
            json!([{"introduced": "0"}, {"fixed": "3.0.15-1"}]),
            json!({"withdrawn": "2026-02-01T00:00:00Z"}),
        ),
        osv(
            "DSA-0001-1",
            &["CVE-2024-9143"],
            "openssl",
            json!([{"introduced": "0"}, {"fixed": "3.0.15-1"}]),
            sev("CVSS:3.1/AV:N/garbage"),
        ),
    ];
    for (id, r) in &records {
        write(&osv_dir.join(format!("{id}.json")), r.to_string().as_bytes());
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"#model_version:v2025.03.14,score_date:2026-11-28T00:00:00+0000\ncve,epss,percentile\nCVE-2024-2398,0.00150,0.51\nCVE-2024-6387,0.91000,0.99\nCVE-1999-0001,nonsense,0.1\n").unwrap();
    let epss = dir.join("epss_scores-2026-11-28.csv.gz");
    write(&epss, &gz.finish().unwrap());
    [dir.join("tracker.json"), osv_dir, shared_kev(), epss]
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

fn fixture(tag: &str) -> Fixture {
    let dir = TempDir::new(tag);
    let root = dir.0.join("root");
    machine(&root, STATUS);
    let bundle = dir.0.join("intel.pmi");
    let mut args = vec!["intel".to_string(), "import".into()];
    args.extend(inputs(&dir.0));
    args.extend(["--out".into(), bundle.display().to_string()]);
    let out = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    Fixture { root, bundle: bundle.display().to_string(), dir }
}

/// The real CISA KEV catalog from the shared reference data.
fn shared_kev() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/kev/known_exploited_vulnerabilities.json");
    assert!(
        p.exists(),
        "{} is missing: the shared reference data must sit beside the project",
        p.display()
    );
    p
}

fn vulns(f: &Fixture, extra: &[&str]) -> Vec<Assessed> {
    let root = f.root.display().to_string();
    let mut args = vec!["vulns", "--bundle", &f.bundle, "--root", &root, "--json"];
    args.extend_from_slice(extra);
    let v: VulnsOut = cli_json(&args);
    v.findings
}

/// A verdict's name, as its JSON spells it.
fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Affected { .. } => "Affected",
        Verdict::Open { .. } => "Open",
        Verdict::Undetermined => "Undetermined",
        Verdict::Fixed { .. } => "Fixed",
        Verdict::NotAffected => "NotAffected",
    }
}

#[test]
fn debian_matching_gets_every_hard_case_right() {
    let f = fixture("intel-match");
    let found = vulns(&f, &["--exposure", "internet"]);
    let got: BTreeSet<(String, String, String)> = found
        .iter()
        .map(|a| {
            let f = &a.finding;
            (f.cve.clone(), f.source.clone(), verdict_name(&f.verdict).to_string())
        })
        .collect();
    let want: BTreeSet<(String, String, String)> = [
        ("CVE-2024-28085", "util-linux", "Affected"),
        ("CVE-2099-0001", "bash", "Undetermined"),
        ("CVE-2024-9143", "openssl", "Affected"),
        ("CVE-2024-0002", "openssl", "Open"),
        ("CVE-2024-0003", "openssl", "Affected"),
        ("CVE-2024-2398", "curl", "Affected"),
        ("CVE-2023-38545", "curl", "Fixed"),
        ("CVE-2024-6387", "openssh", "Affected"),
        ("CVE-2021-4034", "policykit-1", "Affected"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(got, want, "findings: {found:#?}");
    let by = |cve: &str| found.iter().find(|a| a.finding.cve == cve).unwrap().clone();
    // The disagreement is shown, with the tracker's verdict counting.
    let d = by("CVE-2023-38545");
    assert_eq!(d.finding.origin, Origin::Tracker);
    assert_eq!(d.finding.disagreements.len(), 1);
    // Both binaries of the curl source are named.
    assert_eq!(by("CVE-2024-2398").finding.binaries, ["curl", "libcurl4"]);
    let curl = by("CVE-2024-2398").finding.verdict;
    assert!(matches!(curl, Verdict::Affected { in_security: true, .. }), "{curl:?}");
    assert_eq!(
        by("CVE-2024-0002").finding.verdict,
        Verdict::Open { reason: Some("postponed: Minor issue".into()) }
    );
    // Exposed, automatable, total impact, not in KEV: 3 days (BOD 26-04 row 5).
    let ssh = by("CVE-2024-6387");
    assert_eq!(ssh.risk.due, Due::Days3);
    assert_eq!(
        ssh.risk.inputs,
        DueInputs { exposed: true, kev: false, automatable: true, total_impact: true }
    );
    // PwnKit is in the real KEV catalog: local vector, total impact -> 3 days when exposed.
    let pwnkit = by("CVE-2021-4034");
    assert!(pwnkit.risk.inputs.kev);
    assert_eq!(pwnkit.risk.likelihood.0, 1.0);
    assert_eq!(pwnkit.risk.due, Due::Days3);
    // No fix: exception needed; unimportant ranks last among exposed findings.
    assert_eq!(by("CVE-2024-0002").risk.due, Due::ExceptionNeeded);
    let exposed: Vec<&Assessed> =
        found.iter().filter(|a| !matches!(a.finding.verdict, Verdict::Fixed { .. })).collect();
    assert_eq!(exposed.last().unwrap().finding.cve, "CVE-2024-0003");
    // Internal by default: the same openssh finding is due in 60 days (row 13).
    let internal = vulns(&f, &[]);
    let ssh = internal.iter().find(|a| a.finding.cve == "CVE-2024-6387").unwrap();
    assert_eq!(ssh.risk.due, Due::Days60);
    // Filters.
    // The same bundle ranking a fleet of exported inventories: two sites, one patched machine.
    let fleet = f.dir.0.join("fleet");
    let inv = |status: &str| {
        let packages: Vec<Value> = status
            .split("\n\n")
            .filter_map(|st| {
                let field = |k: &str| st.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix(": ")).map(str::to_string);
                Some(json!({"name": field("Package")?, "version": field("Version")?, "arch": field("Architecture")?,
                    "status": field("Status")?.rsplit(' ').next()?.to_string(), "source": field("Source")}))
            })
            .collect();
        json!({"node": "x", "verified_against_signed_record": true, "inventory": {"hostname": "h", "os": "Debian", "codename": "bookworm",
            "kernel": "6.1", "arch": "x86_64", "cpus": 1, "memory_bytes": 1, "packages": packages}})
    };
    let patched = STATUS.replace("1:9.2p1-2+deb12u2", "1:9.2p1-2+deb12u3");
    write(&fleet.join("paris/a.json"), inv(STATUS).to_string().as_bytes());
    write(&fleet.join("paris/b.json"), inv(&patched).to_string().as_bytes());
    write(&fleet.join("lyon/c.json"), inv(STATUS).to_string().as_bytes());
    let ranked: Vec<FleetCve> =
        cli_json(&["vulns", "--bundle", &f.bundle, "--fleet", fleet.to_str().unwrap(), "--json"]);
    let ssh = ranked.iter().find(|c| c.cve == "CVE-2024-6387").unwrap();
    assert_eq!(ssh.nodes, 2);
    assert_eq!(ssh.sites, BTreeMap::from([("lyon".to_string(), 1), ("paris".to_string(), 1)]));
    let util = ranked.iter().find(|c| c.cve == "CVE-2024-28085").unwrap();
    assert_eq!(util.nodes, 3);
    let kev_only = vulns(&f, &["--kev"]);
    assert_eq!(kev_only.len(), 1);
    assert!(vulns(&f, &["--min-score", "101"]).is_empty());
}

#[test]
fn import_counts_what_it_skipped_and_explain_shows_the_arithmetic() {
    let f = fixture("intel-explain");
    let header: Header = cli_json(&["intel", "show", &f.bundle, "--json"]);
    let by_kind = |k: SourceKind| -> SourceInfo {
        header.sources.iter().find(|s| s.kind == k).unwrap().clone()
    };
    let tracker = by_kind(SourceKind::DebianTracker);
    assert_eq!(tracker.skipped.get("invalid version string"), Some(&1));
    assert_eq!(tracker.skipped.get("not a CVE id (tracker TEMP- entry)"), Some(&1));
    let osv = by_kind(SourceKind::Osv);
    assert_eq!(osv.skipped.get("withdrawn"), Some(&1));
    assert_eq!(osv.skipped.get("CVSS vector does not parse (record kept without it)"), Some(&1));
    let epss = by_kind(SourceKind::Epss);
    assert_eq!(epss.records, 2);
    assert_eq!(epss.date.as_deref(), Some("2026-11-28"));
    assert!(by_kind(SourceKind::Kev).records > 1000, "the real KEV catalog");
    let root = f.root.display().to_string();
    let out = cli(&["explain", "CVE-2024-28085", "--bundle", &f.bundle, "--root", &root]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("util-linux 2.38.1-5+deb12u1 (binaries: bsdutils)"), "{text}");
    assert!(text.contains("installed 2.38.1-5+deb12u1 < fixed 2.38.1-5+deb12u2"), "{text}");
    assert!(text.contains("score") && text.contains("× likelihood"), "{text}");
    let out = cli(&["explain", "CVE-2023-45853", "--bundle", &f.bundle, "--root", &root]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(
        "no advisory in this bundle names a source package installed here for release bookworm"
    ));
}

#[test]
fn bad_input_gets_a_clear_error_and_nothing_is_written() {
    let dir = TempDir::new("intel-bad");
    let out_path = dir.0.join("b.pmi");
    let out_s = out_path.display().to_string();
    // 5 GB: refused by its size, before reading (the file is sparse).
    let huge = dir.0.join("tracker.json");
    std::fs::File::create(&huge).unwrap().set_len(5 << 30).unwrap();
    let out = cli(&["intel", "import", huge.to_str().unwrap(), "--out", &out_s]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("over the limit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out_path.exists());
    // A malformed file is refused naming the file and the position.
    let bad = dir.0.join("data.json");
    std::fs::write(&bad, "{\"curl\": {\"CVE-1\": {\"releases\": [1, 2,,]}}}").unwrap();
    let out = cli(&["intel", "import", bad.to_str().unwrap(), "--out", &out_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("data.json at line 1 column"), "{err}");
    assert!(!out_path.exists());
    // An exception needs an expiry: refused before anything is signed or sent.
    let out = cli(&[
        "exception",
        "add",
        "--cve",
        "CVE-2024-1",
        "--justification",
        "x",
        "--admin-key",
        "k",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--expires"));
    // A truncated bundle is refused when read.
    let f = fixture("intel-trunc");
    let bytes = std::fs::read(&f.bundle).unwrap();
    let cut = f.dir.0.join("cut.pmi");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let root = f.root.display().to_string();
    let out = cli(&["vulns", "--bundle", cut.to_str().unwrap(), "--root", &root]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a readable intel bundle"));
}

/// The index files apt itself uses (configured sources only), updating the lists first when
/// this machine has none.
fn apt_index_files() -> Vec<String> {
    let list = || -> Vec<String> {
        let out = Command::new("apt-get")
            .args(["indextargets", "--format", "$(FILENAME)", "Identifier: Packages"])
            .output()
            .expect("apt-get is part of every Debian system");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|p| Path::new(p).exists())
            .map(str::to_string)
            .collect()
    };
    let mut files = list();
    if files.is_empty() {
        let st = Command::new("apt-get").args(["update", "-qq"]).status().expect("apt-get update");
        assert!(
            st.success(),
            "apt-get update failed and this machine has no apt lists to compare with"
        );
        files = list();
    }
    assert!(!files.is_empty(), "no Packages index on this machine even after apt-get update");
    files
}

#[test]
fn updates_name_exactly_what_apt_list_upgradable_names() {
    let dir = TempDir::new("intel-apt");
    let files = apt_index_files();
    let bundle = dir.0.join("apt.pmi").display().to_string();
    let mut args = vec!["intel", "import", "--out", &bundle, "--json"];
    args.extend(files.iter().map(String::as_str));
    let imported: ImportOut = cli_json(&args);
    assert!(imported.written.index_packages > 1000, "{imported:?}");
    let ours: Vec<Update> = cli_json(&["updates", "--bundle", &bundle, "--json"]);
    let ours: BTreeSet<(String, String)> =
        ours.into_iter().map(|u| (u.name, u.candidate)).collect();
    let apt = Command::new("apt")
        .args(["list", "--upgradable"])
        .env("LC_ALL", "C")
        .output()
        .expect("apt");
    let apt: BTreeSet<(String, String)> = String::from_utf8_lossy(&apt.stdout)
        .lines()
        .filter(|l| l.contains("[upgradable from"))
        .map(|l| {
            let name = l.split('/').next().unwrap().to_string();
            let version = l.split_whitespace().nth(1).unwrap().to_string();
            (name, version)
        })
        .collect();
    println!("compared {} upgradable packages with apt", apt.len());
    assert_eq!(ours, apt);
}

#[test]
fn a_published_bundle_reaches_every_node_and_the_fleet_view_counts_exposure() {
    let _serial = serial();
    let mut mesh = Mesh::new("intel-mesh", 4, 2);
    // Node 2 already runs the fixed openssh; the others do not.
    let patched = STATUS.replace("1:9.2p1-2+deb12u2", "1:9.2p1-2+deb12u3");
    for i in 0..4 {
        let root = mesh.root.0.join(format!("machine{i}"));
        machine(&root, if i == 2 { &patched } else { STATUS });
        mesh.node_config.insert(
            i,
            format!("inventory_root = \"{}\"\ninventory_interval_ms = 1000\n", root.display()),
        );
    }
    // Node 3 lies: it serves its findings without the openssh one.
    mesh.node_env.insert(3, vec![("PATCHMESH_TEST_HIDE_FINDING".into(), "CVE-2024-6387".into())]);
    mesh.start_all();
    let files = inputs(&mesh.root.0.join("inputs"));
    let bundle = mesh.root.0.join("intel.pmi").display().to_string();
    let admin = mesh.admin_key();
    // A node key is no admin key: refused, and nothing is published.
    let not_admin = mesh.nodes[1].dir.join("node.key").display().to_string();
    let mut args: Vec<&str> = vec!["intel", "import"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--out", &bundle, "--admin-key", &not_admin]);
    let out = mesh.cli_at(0, &args);
    assert!(!out.status.success(), "a non-admin key published a bundle");
    args.truncate(args.len() - 2);
    args.extend(["--admin-key", &admin, "--json"]);
    let out = mesh.cli_at(0, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let imported: ImportOut = serde_json::from_slice(&out.stdout).unwrap();
    let content = imported.content_id;
    // Every node fetches it, assesses itself and signs its exposure into its record.
    for i in 0..4 {
        let status = wait_for(Duration::from_secs(60), || {
            let out = mesh.cli_at(i, &["intel", "status", "--json"]);
            let v: IntelView = serde_json::from_slice(&out.stdout).ok()?;
            (v.bundle.as_deref() == Some(content.as_str()) && v.summary.is_some()).then_some(v)
        })
        .unwrap_or_else(|| panic!("node {i} never used the bundle:\n{}", mesh.log(i)));
        let exposed = status.findings.iter().any(|a| {
            a.finding.cve == "CVE-2024-6387"
                && matches!(a.finding.verdict, Verdict::Affected { .. })
        });
        assert_eq!(exposed, i != 2, "node {i}");
        assert_eq!(status.summary.unwrap().bundle.to_hex(), content);
    }
    let catalog: CatalogView =
        serde_json::from_slice(&mesh.cli_at(3, &["catalog", "show", "--json"]).stdout).unwrap();
    let intel_entries: Vec<&str> = catalog
        .entries
        .iter()
        .map(|x| x.key.as_str())
        .filter(|k| k.starts_with("intel/"))
        .collect();
    assert_eq!(intel_entries.len(), 1, "only the admin's entry exists");
    // The fleet view at node 0: its own site from records, the other from its summary.
    let row = wait_for(Duration::from_secs(60), || {
        let out = mesh.cli_at(0, &["vulns", "--json"]);
        let v: FleetVulnsOut = serde_json::from_slice(&out.stdout).ok()?;
        let row = v.cves.into_iter().find(|r| r.cve == "CVE-2024-6387")?;
        (row.nodes == 3).then_some(row)
    })
    .unwrap_or_else(|| {
        panic!(
            "the fleet view never counted 3 exposed nodes: {}",
            String::from_utf8_lossy(&mesh.cli_at(0, &["vulns", "--json"]).stdout)
        )
    });
    assert_eq!(row.sites, BTreeMap::from([("site0".to_string(), 1), ("site1".to_string(), 2)]));
    assert_eq!(row.fixed_version.as_deref(), Some("1:9.2p1-2+deb12u3"));
    // A node's own findings, through the node.
    let own: VulnsOut =
        serde_json::from_slice(&mesh.cli_at(2, &["vulns", "--node", "self", "--json"]).stdout)
            .unwrap();
    assert!(!own.findings.is_empty());
    assert!(own.findings.iter().all(|a| a.finding.cve != "CVE-2024-6387"));
    let text =
        String::from_utf8_lossy(&mesh.cli_at(0, &["explain", "CVE-2024-6387"]).stdout).to_string();
    assert!(text.contains("installed 1:9.2p1-2+deb12u2 < fixed 1:9.2p1-2+deb12u3"), "{text}");

    // Another member's findings, checked against its signed digest: node 1's are served
    // honestly, node 3's lie is caught.
    let key = |i: usize| mesh.nodes[i].key.clone();
    let honest: RemoteFindingsView =
        serde_json::from_slice(&mesh.cli_at(3, &["vulns", "--node", &key(1), "--json"]).stdout)
            .unwrap();
    assert!(honest.findings.iter().any(|a| a.finding.cve == "CVE-2024-6387"));
    let text = String::from_utf8_lossy(
        &mesh.cli_at(3, &["explain", "CVE-2024-6387", "--node", &key(1)]).stdout,
    )
    .to_string();
    assert!(text.contains("installed 1:9.2p1-2+deb12u2 < fixed 1:9.2p1-2+deb12u3"), "{text}");
    let updates = mesh.cli_at(3, &["updates", "--node", &key(1), "--json"]);
    assert!(updates.status.success(), "{}", String::from_utf8_lossy(&updates.stderr));
    let lie = mesh.cli_at(1, &["vulns", "--node", &key(3), "--json"]);
    assert!(!lie.status.success());
    assert!(
        String::from_utf8_lossy(&lie.stderr)
            .contains("do not match the digest in its signed record"),
        "{}",
        String::from_utf8_lossy(&lie.stderr)
    );

    // Exceptions: one over 90 days is refused; site1 accepts the risk for a few seconds, its
    // nodes list the finding as excepted and the fleet count drops; the expiry reopens it.
    let add = |expires: &str| {
        mesh.cli_at(
            0,
            &[
                "exception",
                "add",
                "--cve",
                "CVE-2024-6387",
                "--target-site",
                "site1",
                "--justification",
                "sshd reachable from the bastion only",
                "--control",
                "firewall rule 7",
                "--expires",
                expires,
                "--admin-key",
                &admin,
            ],
        )
    };
    let out = add("91d");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("at most 90 days")
    );
    let out = add("12s");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let excepted_at_site1 = |want: bool| {
        wait_for(Duration::from_secs(40), || {
            let out = mesh.cli_at(3, &["vulns", "--node", "self", "--json"]);
            let v: VulnsOut = serde_json::from_slice(&out.stdout).ok()?;
            let f = v.findings.into_iter().find(|a| a.finding.cve == "CVE-2024-6387")?;
            (f.finding.excepted.is_some() == want).then_some(f)
        })
    };
    let f = excepted_at_site1(true).expect("site1's finding never showed the exception");
    let excepted = f.finding.excepted.unwrap();
    assert_eq!(excepted.kind, ExceptionKind::RiskAccepted);
    assert_eq!(excepted.compensating_control.as_deref(), Some("firewall rule 7"));
    let fleet_nodes = || -> Option<u64> {
        let out = mesh.cli_at(0, &["vulns", "--json"]);
        let v: FleetVulnsOut = serde_json::from_slice(&out.stdout).ok()?;
        Some(v.cves.iter().find(|r| r.cve == "CVE-2024-6387").map_or(0, |r| u64::from(r.nodes)))
    };
    wait_for(Duration::from_secs(40), || (fleet_nodes()? == 1).then_some(()))
        .expect("the fleet still counts excepted nodes");
    excepted_at_site1(false).expect("the lapsed exception never reopened the finding");
    wait_for(Duration::from_secs(40), || (fleet_nodes()? == 3).then_some(()))
        .expect("the reopened finding is not counted again");
}
