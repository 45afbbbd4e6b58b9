//! `scripts/bench-dashboard.sh`: what the dashboard costs a node.
//!
//! 1. Page render, server side, for a fleet of `BENCH_DASH_NODES` (10,000) nodes, all members
//!    of the serving node's site (the heaviest case: a node holds every record of its own
//!    site, and only one summary per other site), each with an exposure summary and three
//!    rollout standings, plus 100 other sites' summaries. Timed as a request runs it: the
//!    control answer's JSON round trip (the daemon answers the dashboard as it answers the
//!    CLI), the page model, and the template. Median and worst of 20 runs.
//! 2. `/metrics` for the same fleet: snapshot from the views, OpenMetrics encoding, series.
//! 3. Idle cost of a real node with the dashboard and metrics on and no browser open, against
//!    the same node without them: RSS and CPU over 20 s.
//!
//! The last line is one JSON object.

use patchmesh_node::control::{
    AssetBasis, ContentListView, ExposureView, IntegrationsView, ReportBasisView, RolloutsView,
    SiteBasis, SiteExposureView, StatusView,
};
use patchmesh_node::dashboard::{self, NodeFilter};
use patchmesh_protocol::intel::report::{
    DueCounts, ExposureSummary, SeverityCounts, SiteCve, SiteExposure, TopFinding,
};
use patchmesh_protocol::intel::risk::Due;
use serde_json::json;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn hex(n: u64) -> String {
    format!("{n:064x}")
}

fn exposure(i: u64, now: u64) -> ExposureSummary {
    let top = (0..5)
        .map(|k| TopFinding {
            cve: format!("CVE-2026-{:05}", (i * 7 + k * 13) % 500),
            source: format!("pkg{}", (i + k) % 90),
            score_tenths: ((i * 31 + k * 17) % 1000) as u16,
            due: [Due::Days3, Due::Days14, Due::Days60, Due::NextWindow][(k % 4) as usize],
            fixed_version: (k % 3 != 0).then(|| "1.2.3-1+deb12u1".to_string()),
            kev: (i + k) % 23 == 0,
        })
        .collect();
    ExposureSummary {
        bundle: patchmesh_protocol::ids::ContentId([4; 32]),
        bundle_created_at: patchmesh_protocol::ids::Millis(now - 86_400_000),
        counts: DueCounts {
            days3: (i % 3) as u32,
            days14: (i % 5) as u32,
            days60: (i % 7) as u32,
            window: (i % 4) as u32,
            exception: (i % 2) as u32,
        },
        kev: (i % 23 == 0) as u32,
        excepted: (i % 11 == 0) as u32,
        severity: SeverityCounts::default(),
        top,
        findings_digest: [0; 32],
    }
}

fn fleet(nodes: usize, now: u64) -> (ReportBasisView, ExposureView, RolloutsView, StatusView) {
    let rollout_ids: Vec<String> = (0..3).map(|r| hex(9000 + r)).collect();
    let assets: Vec<AssetBasis> = (0..nodes as u64)
        .map(|i| AssetBasis {
            node: hex(i + 1),
            site: "hq".into(),
            labels: [
                ("ring".to_string(), ["canary", "half", "main"][(i % 3) as usize].to_string()),
                ("host".to_string(), format!("pos-{i:05}")),
            ]
            .into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: "6.1.0-27-amd64".into(),
            package_count: 1800,
            record_written_at_ms: now - (i * 7919) % (3 * 3_600_000),
            exposure: Some(exposure(i, now)),
            audit: Some((1000 + i, hex(i * 7), now - 3_600_000)),
            standings: rollout_ids
                .iter()
                .enumerate()
                .map(|(r, id)| {
                    let st = ["succeeded", "pending", "installing", "failed"]
                        [((i + r as u64) % 4) as usize];
                    (id.clone(), (i % 3) as u8, st.to_string())
                })
                .collect(),
        })
        .collect();
    let site_exposure = |s: u64| SiteExposure {
        bundles: Default::default(),
        counts: DueCounts { days3: 5, days14: 20, days60: 40, window: 10, exception: 3 },
        kev: (s % 5) as u32,
        excepted: 2,
        severity: SeverityCounts::default(),
        nodes_exposed: 60,
        top: (0..10)
            .map(|k| SiteCve {
                cve: format!("CVE-2026-{:05}", (s * 3 + k * 41) % 500),
                source: format!("pkg{}", k),
                nodes: (k * 3 + 1) as u32,
                score_tenths: (900 - k * 40) as u16,
                due: Due::Days14,
                fixed_version: Some("2.0-1".into()),
                kev: k == 0,
            })
            .collect(),
    };
    let sites: Vec<SiteBasis> = (0..100)
        .map(|s| SiteBasis {
            site: format!("branch-{s:03}"),
            members: 100,
            author: hex(50_000 + s),
            exposure: site_exposure(s),
        })
        .collect();
    let basis = ReportBasisView {
        mesh_name: "bench".into(),
        mesh: hex(1),
        node: hex(1),
        site: "hq".into(),
        now_ms: now,
        catalog_state: hex(2),
        records_root: hex(3),
        bundle: Some(hex(4)),
        bundle_created_at_ms: now - 86_400_000,
        assets,
        sites,
        exceptions: Vec::new(),
    };
    let exposure = ExposureView {
        bundle: Some(hex(4)),
        bundle_created_at_ms: now - 86_400_000,
        sites: (0..101)
            .map(|s| SiteExposureView {
                site: format!("branch-{s:03}"),
                members: 100,
                exposure: site_exposure(s),
            })
            .collect(),
    };
    let ring = |name: &str, t: u32| {
        json!({"name": name, "percent": 10, "labels": {}, "gate": {"min_success_permille": 900,
        "max_failures": 0, "max_failure_permille": 0, "min_soak_ms": 60000, "min_reports": 1},
        "targeted": t, "pending": t / 4, "installing": t / 8, "soaking": t / 8,
        "succeeded": t / 2, "failed": 3, "rolled_back": 1, "unsummarised_sites": 0})
    };
    let rollouts: RolloutsView = serde_json::from_value(json!({
        "node": hex(1), "site": "hq", "now_ms": now, "ignored": [], "alarms": 12,
        "rollouts": rollout_ids.iter().enumerate().map(|(r, id)| json!({
            "id": id, "hash": hex(77), "author": hex(5), "content_id": hex(100 + r as u64),
            "patch": {"name": "openssl", "version": format!("3.0.{r}"), "executor": "dpkg", "size_bytes": 1_500_000},
            "created_at_ms": now - 3_600_000, "control": if r == 2 { json!({"state": "halted", "ring": 0, "failures": 3}) } else { json!({"state": "running"}) },
            "approvals": null, "approvals_needed": null, "open_rings": 2, "waiting": "ring half: 40 of 900 succeeded members",
            "rings": [ring("canary", 100), ring("half", 5000), ring("main", 15000)], "commands": [],
            "local": null, "standing": null, "stopped_at_ms": null, "max_targets": 100000, "rollback_on_halt": true,
        })).collect::<Vec<_>>(),
    }))
    .expect("a rollouts view");
    let status: StatusView = serde_json::from_value(json!({
        "node": hex(1), "peer_id": "12D3KooW", "site": "hq", "labels": {}, "mesh": "bench", "mesh_id": hex(1),
        "trust_version": 3, "catalog_changes": 120, "catalog_state": hex(2), "state_hash": hex(8),
        "site_records": nodes, "site_summaries": 100, "peers_connected": 8, "peers_admitted": 8,
        "gossip_mesh": {"control": 6, "site": 6, "summaries": 6}, "listen": [], "bytes_sent": 1u64 << 30,
        "bytes_received": 1u64 << 31,
        "messages_sent": (0..14).map(|k| (format!("kind{k}"), json!({"messages": 1000, "bytes": 100000}))).collect::<serde_json::Map<_, _>>(),
        "uptime_ms": 86_400_000u64, "accepted": 1_000_000u64,
        "rejected": (0..12).map(|k| (format!("reason{k}"), json!(k))).collect::<serde_json::Map<_, _>>(),
        "unadmitted_dropped": 4, "pid": 1, "restored_objects": 10000, "restore_refused": 0,
        "payloads_held": 3, "payload_bytes_held": 4_500_000,
    }))
    .expect("a status view");
    (basis, exposure, rollouts, status)
}

/// Median and worst of `runs` timings of `f`, in ms.
fn time(runs: usize, mut f: impl FnMut() -> usize) -> (f64, f64, usize) {
    let mut v = Vec::new();
    let mut out = 0;
    for _ in 0..runs {
        let t = Instant::now();
        out = std::hint::black_box(f());
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1], out)
}

/// The control answer's trip: the daemon encodes its view as JSON, the dashboard decodes it.
fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(v: &T) -> T {
    let value = serde_json::to_value(v).unwrap();
    serde_json::from_value(value).unwrap()
}

fn proc_stat(pid: u32) -> (f64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (rss, ticks)
}

/// A one-node mesh, with or without the dashboard and metrics; (RSS MB, CPU %) after settling.
fn idle(with_dashboard: bool, settle: Duration, window: Duration) -> (f64, f64) {
    let mut m =
        patchmesh_tests::Mesh::new(if with_dashboard { "idle-dash" } else { "idle-bare" }, 1, 1);
    if with_dashboard {
        let port = |_: ()| {
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
        };
        m.node_tables.insert(
            0,
            format!(
                "[dashboard]\nlisten = \"127.0.0.1:{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n",
                port(()),
                port(())
            ),
        );
    }
    m.start(0);
    let pid = m.nodes[0].child.as_ref().unwrap().id();
    std::thread::sleep(settle);
    let (_, t0) = proc_stat(pid);
    std::thread::sleep(window);
    let (rss, t1) = proc_stat(pid);
    let hz = 100.0;
    (rss, (t1 - t0) as f64 / hz / window.as_secs_f64() * 100.0)
}

fn main() {
    let nodes = env_or("BENCH_DASH_NODES", 10_000);
    let runs = 20;
    let now = 1_800_000_000_000u64;
    let (basis, exposure, rollouts, status) = fleet(nodes, now);
    let basis_json = serde_json::to_vec(&basis).unwrap().len();

    // The site's records reach the dashboard typed, in process (`Shared::basis`); building
    // them is the daemon's copy out of its records, which `basis.clone()` stands in for here.
    // The JSON round trip is what the same answer would cost over the control socket's path.
    let (trip_med, trip_max, _) = time(runs, || round_trip(&basis).assets.len());
    let (copy_med, _, _) = time(runs, || std::sync::Arc::new(basis.clone()).assets.len());
    let (ov_med, ov_max, ov_bytes) = time(runs, || {
        let b = std::sync::Arc::new(basis.clone());
        let e = round_trip(&exposure);
        let r = round_trip(&rollouts);
        let m = dashboard::overview(&status, &b, &e, &r, (0, 0));
        dashboard::pages::overview(&m, "0123456789abcdef").len()
    });
    let (nodes_med, nodes_max, nodes_bytes) = time(runs, || {
        let b = std::sync::Arc::new(basis.clone());
        let m = dashboard::nodes_page(&b, NodeFilter::default(), false);
        dashboard::pages::nodes(&m, "0123456789abcdef").len()
    });
    let filter = NodeFilter {
        q: "pos-0".into(),
        status: "pending".into(),
        sort: "findings".into(),
        dir: "desc".into(),
        page: 3,
        ..NodeFilter::default()
    };
    let (filt_med, filt_max, _) = time(runs, || {
        let b = std::sync::Arc::new(basis.clone());
        let m = dashboard::nodes_page(&b, filter.clone(), false);
        dashboard::pages::nodes(&m, "0123456789abcdef").len()
    });
    let (json_med, json_max, json_bytes) = time(5, || {
        let b = std::sync::Arc::new(basis.clone());
        serde_json::to_vec(&dashboard::nodes_page(&b, NodeFilter::default(), true)).unwrap().len()
    });

    // /metrics: snapshot from the views and encoding.
    let integrations: IntegrationsView = serde_json::from_value(json!({
        "policy": null, "sinks": [], "pending": [], "delivered": 120, "dead": 2
    }))
    .unwrap();
    let contents = ContentListView { held_bytes: 0, contents: Vec::new() };
    let collector = patchmesh_node::metrics::Collector::default();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(collector.clone()));
    let (m_med, m_max, m_bytes) = time(runs, || {
        let r = round_trip(&rollouts);
        let e = round_trip(&exposure);
        let snap = patchmesh_node::metrics::snapshot(
            &status,
            &r,
            &e,
            &integrations,
            &contents,
            (1 << 20, 1 << 18),
            Some(now - 60_000),
            now,
        );
        *collector.0.lock().unwrap() = snap;
        patchmesh_node::metrics::encode(&registry).len()
    });
    let text = patchmesh_node::metrics::encode(&registry);
    let series = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();

    println!("fleet                {nodes} nodes in this site + 100 other sites' summaries (basis JSON {:.1} MB)", basis_json as f64 / 1e6);
    println!("basis in process     median {copy_med:.1} ms (a copy of the view; over JSON it would take {trip_med:.1} ms, worst {trip_max:.1})");
    println!(
        "overview             median {ov_med:.1} ms, worst {ov_max:.1} ms ({:.0} KB)",
        ov_bytes as f64 / 1e3
    );
    println!(
        "nodes (page 1)       median {nodes_med:.1} ms, worst {nodes_max:.1} ms ({:.0} KB)",
        nodes_bytes as f64 / 1e3
    );
    println!("nodes (filter+sort)  median {filt_med:.1} ms, worst {filt_max:.1} ms");
    println!(
        "nodes JSON (all)     median {json_med:.1} ms, worst {json_max:.1} ms ({:.1} MB)",
        json_bytes as f64 / 1e6
    );
    println!("metrics scrape       median {m_med:.2} ms, worst {m_max:.2} ms, {series} series, {m_bytes} bytes (the node's own families; libp2p's add ~30)");

    let settle = Duration::from_secs(env_or("BENCH_DASH_SETTLE_S", 10) as u64);
    let window = Duration::from_secs(env_or("BENCH_DASH_WINDOW_S", 20) as u64);
    let (bare_rss, bare_cpu) = idle(false, settle, window);
    let (dash_rss, dash_cpu) = idle(true, settle, window);
    println!("idle node            without dashboard {bare_rss:.1} MB RSS, {bare_cpu:.2}% CPU; with dashboard and metrics (no browser) {dash_rss:.1} MB, {dash_cpu:.2}% CPU; RSS +{:.1} MB", dash_rss - bare_rss);
    println!(
        "{}",
        json!({
            "nodes": nodes, "overview_ms": ov_med, "overview_worst_ms": ov_max,
            "nodes_page_ms": nodes_med, "nodes_page_worst_ms": nodes_max,
            "nodes_filtered_ms": filt_med, "nodes_json_ms": json_med,
            "basis_copy_ms": copy_med, "basis_json_round_trip_ms": trip_med, "metrics_ms": m_med, "metrics_worst_ms": m_max,
            "metrics_series": series, "idle_rss_mb": {"without": bare_rss, "with": dash_rss},
            "idle_cpu_percent": {"without": bare_cpu, "with": dash_cpu},
        })
    );
}
