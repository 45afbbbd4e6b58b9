//! `scripts/bench-report.sh`: a compliance report for a big fleet.
//!
//! Builds a synthetic replicated state (the form `patchmesh report compliance` reads from a
//! node: `ReportBasisView` + each node's served findings history + the rollouts view) of
//! `BENCH_REPORT_NODES` (10,000) nodes × `BENCH_REPORT_FINDINGS` (50) findings each, a third of
//! them remediated in the period, and times each step as the CLI runs it: `build_ms` (rows and
//! aggregates), `sign_ms` (body, hash, node and admin signatures), `html_ms`, `pdf_ms`,
//! `csv_ms`, and `verify_ms` (signatures plus every figure recomputed). Prints sizes and peak
//! RSS, and one JSON line last.

use patchmesh_node::control::{AssetBasis, ReportBasisView, RolloutsView};
use patchmesh_node::report::{self, FetchedFindings, ReportSig};
use patchmesh_protocol::crypto::{Ed25519, SecretKey};
use patchmesh_protocol::ids::Millis;
use patchmesh_protocol::intel::history::HistoryEntry;
use patchmesh_protocol::intel::risk::{Due, Severity};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Instant;

const DAY: u64 = 86_400_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let nodes = env_or("BENCH_REPORT_NODES", 10_000);
    let per = env_or("BENCH_REPORT_FINDINGS", 50);
    let now = 1_800_000_000_000u64;
    let mut rng = StdRng::seed_from_u64(7);
    let hex = |n: u64| format!("{:064x}", n);
    let assets: Vec<AssetBasis> = (0..nodes as u64)
        .map(|i| AssetBasis {
            node: hex(i + 1),
            site: format!("branch-{}", i / 100),
            labels: [(
                "ring".to_string(),
                ["canary", "half", "main"][(i % 3) as usize].to_string(),
            )]
            .into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: "6.1.0-27-amd64".into(),
            package_count: 1800,
            record_written_at_ms: now - rng.gen_range(0..2 * DAY),
            exposure: None,
            audit: Some((rng.gen_range(100..100_000), hex(i * 7), now - 3_600_000)),
            standings: vec![(hex(900), 1, "succeeded".into())],
        })
        .collect();
    let sev = [Severity::Critical, Severity::High, Severity::Medium, Severity::Low];
    let due = [Due::Days3, Due::Days14, Due::Days60, Due::NextWindow];
    let mut findings = BTreeMap::new();
    for a in &assets {
        let history: Vec<HistoryEntry> = (0..per)
            .map(|k| {
                let first = now - rng.gen_range(0..120) * DAY;
                let closed =
                    (k % 3 == 0).then(|| first + rng.gen_range(0..40) * DAY).filter(|c| *c < now);
                let d = due[k % 4];
                HistoryEntry {
                    cve: format!("CVE-2026-{:05}", (k * 37) % 99_999),
                    source: format!("pkg{}", k % 700),
                    binaries: vec![format!("pkg{}", k % 700), format!("libpkg{}-1", k % 700)],
                    installed: "1.2.3-1".into(),
                    fixed_version: Some("1.2.3-1+deb12u1".into()),
                    fix_seen_at: Some(Millis(first)),
                    first_seen: Millis(first),
                    due_at: Some(Millis(first + [3, 14, 60, 90][k % 4] * DAY)),
                    due: d,
                    severity: sev[k % 4],
                    kev: k % 17 == 0,
                    closed_at: closed.map(Millis),
                    closed_version: closed.map(|_| "1.2.3-1+deb12u1".into()),
                    excepted: None,
                    reopened: 0,
                }
            })
            .collect();
        findings.insert(
            a.node.clone(),
            Ok(FetchedFindings {
                hostname: format!("pos-{}", &a.node[56..]),
                findings: Vec::new(),
                history,
            }),
        );
    }
    let basis = ReportBasisView {
        mesh_name: "bench".into(),
        mesh: hex(1),
        node: hex(1),
        site: "branch-0".into(),
        now_ms: now,
        catalog_state: hex(2),
        records_root: hex(3),
        bundle: Some(hex(4)),
        bundle_created_at_ms: now - DAY,
        assets,
        sites: Vec::new(),
        exceptions: Vec::new(),
    };
    let rollouts: RolloutsView = serde_json::from_value(serde_json::json!({
        "node": hex(1), "site": "branch-0", "now_ms": now, "rollouts": [], "ignored": [], "alarms": 0
    }))
    .expect("an empty rollouts view");
    let node_key = SecretKey::from_seed([5; 32]);
    let admin_key = SecretKey::from_seed([6; 32]);

    let t = Instant::now();
    let r = report::build(&report::Input {
        basis: &basis,
        findings: &findings,
        rollouts: &rollouts,
        since_ms: now - 90 * DAY,
        until_ms: now,
        framework: None,
    });
    let build_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let body = r.body();
    let hash = report::body_hash(body.as_bytes());
    let sigs: Vec<ReportSig> =
        vec![report::sign(&hash, &node_key, "node"), report::sign(&hash, &admin_key, "admin")];
    let signed = report::file_text(&body, &sigs);
    let sign_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let html = report::html::render(&r, &signed);
    let html_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let pdf = report::pdf::render(&r, &signed);
    let pdf_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let csv = report::csv::render(&r);
    let csv_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let from_html = report::html::extract(&html, report::REPORT_BYTES_MAX)
        .expect("the HTML carries the report");
    let from_pdf =
        report::pdf::extract(&pdf, report::REPORT_BYTES_MAX).expect("the PDF carries the report");
    assert!(
        from_html.trim_end() == signed.trim_end() && from_pdf == signed,
        "embedded reports are the signed one"
    );
    let (b, _) = report::verify_signatures(&from_html, &Ed25519).expect("signatures verify");
    report::check_consistent(b).expect("figures recompute");
    let verify_ms = t.elapsed().as_millis();

    let s = &r.summary;
    println!(
        "nodes                {nodes} × {per} findings ({} rows in the period)",
        r.findings.len()
    );
    println!("build_ms             {build_ms}");
    println!("sign_ms              {sign_ms} (JSON {:.1} MB)", signed.len() as f64 / 1e6);
    println!(
        "html_ms              {} (build + sign + render: {} ms; {:.1} MB)",
        html_ms,
        build_ms + sign_ms + html_ms,
        html.len() as f64 / 1e6
    );
    println!(
        "pdf_ms               {} (build + sign + render: {} ms; {:.1} MB)",
        pdf_ms,
        build_ms + sign_ms + pdf_ms,
        pdf.len() as f64 / 1e6
    );
    println!("csv_ms               {csv_ms} ({:.1} MB)", csv.len() as f64 / 1e6);
    println!("verify_ms            {verify_ms} (unpack from the HTML and the PDF, signatures, every figure recomputed)");
    println!("peak_rss_mb          {:.0}", peak_rss_mb());
    println!(
        "summary              open {} overdue {} closed {} sla {:?}% mttr {:?} d",
        s.open, s.overdue, s.closed_in_period, s.sla_all.percent, s.mttr_days_mean
    );
    println!(
        "{}",
        serde_json::json!({
            "nodes": nodes, "findings_per_node": per, "rows": r.findings.len(),
            "build_ms": build_ms, "sign_ms": sign_ms, "html_total_ms": build_ms + sign_ms + html_ms,
            "pdf_total_ms": build_ms + sign_ms + pdf_ms, "csv_ms": csv_ms, "verify_ms": verify_ms,
            "json_bytes": signed.len(), "html_bytes": html.len(), "pdf_bytes": pdf.len(), "peak_rss_mb": peak_rss_mb().round(),
        })
    );
}
