//! `scripts/bench-mesh.sh`: 30 real node processes on loopback; one patch published; the time
//! until all hold it; then RSS, CPU and traffic per node in two windows:
//! - **idle**: the patch carries a real payload (`BENCH_PAYLOAD_BYTES`, default 64 KiB) that
//!   every node fetches first, so the window shows what a fleet with nothing to do costs;
//! - **waiting**: a second patch names a payload nobody holds, so the window shows what a fleet
//!   waiting for a payload costs (each site's elected fetcher looking up providers, site
//!   members asking each other, all backing off).
//!
//! Convergence is read from the nodes' own JSON logs: each logs `catalog changed` with a
//! microsecond timestamp when it applies the change, and all run on this machine's clock, so
//! `converge_ms` = last node's timestamp − the publishing node's timestamp. The nodes run the
//! production defaults (anti-entropy every 10 s, summaries every 30 s).
//!
//! Environment: `BENCH_NODES` (default 30), `BENCH_IDLE_S` (default 60, each window),
//! `BENCH_PAYLOAD_BYTES` (default 65536; 0 publishes the first patch without a payload too, so
//! both windows wait).

use patchmesh_tests::{wait_for, Mesh};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn proc_field(pid: u64, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default()
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u64) -> u64 {
    let stat = proc_field(pid, "stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// One `/proc/<pid>/status` field in kB, as MB.
fn status_mb(pid: u64, field: &str) -> f64 {
    proc_field(pid, "status")
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rss_mb(pid: u64) -> f64 {
    status_mb(pid, "VmRSS")
}

fn clock_ticks_per_s() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One line of a node's JSON log (the parts read here).
#[derive(serde::Deserialize)]
struct LogLine {
    timestamp: String,
    fields: LogFields,
}

#[derive(serde::Deserialize)]
struct LogFields {
    #[serde(default)]
    message: String,
}

/// Microseconds since the epoch of the first `catalog changed` line in node `i`'s log.
fn applied_at_us(mesh: &Mesh, i: usize) -> Option<i64> {
    mesh.log(i).lines().find_map(|line| {
        let v: LogLine = serde_json::from_str(line).ok()?;
        if v.fields.message != "catalog changed" {
            return None;
        }
        parse_rfc3339_us(&v.timestamp)
    })
}

/// `2026-11-23T21:39:06.634951Z` → µs since the epoch (UTC only, as tracing prints it).
fn parse_rfc3339_us(ts: &str) -> Option<i64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut us: String = frac.chars().take(6).collect();
    while us.len() < 6 {
        us.push('0');
    }
    Some(((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1_000_000) + us.parse::<i64>().ok()?)
}

/// Starts `n` nodes in three sites and waits until each has admitted a few peers.
fn form_mesh(n: usize) -> Mesh {
    let mut mesh = Mesh::new("bench", n, 3);
    mesh.extra_config =
        "listen = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nlog = \"json\"\npeers_target = 8\n".into();
    let t = Instant::now();
    mesh.start_all();
    eprintln!("started {n} nodes in {} ms", t.elapsed().as_millis());
    // Let the mesh form (every node admitted by at least a few peers).
    let formed = wait_for(Duration::from_secs(60), || {
        (0..n).all(|i| mesh.status(i).peers_admitted >= 3).then_some(())
    });
    assert!(formed.is_some(), "the mesh did not form");
    std::thread::sleep(Duration::from_secs(3));
    let degrees: Vec<String> = (0..n)
        .map(|i| {
            let s = mesh.status(i);
            format!("{}/{}", s.gossip_mesh.control, s.peers_admitted)
        })
        .collect();
    eprintln!("control-topic mesh degree / admitted peers per node: {}", degrees.join(" "));

    mesh
}

/// Publishes a policy (or, with `BENCH_PAYLOAD_BYTES`, a payload) at the middle node and
/// waits until every node holds it. Returns the time from the publishing node applying it to
/// the last node applying it, the CLI's time, and the payload's content id.
fn publish_and_converge(mesh: &Mesh, n: usize) -> (f64, f64, Option<String>) {
    let origin = n / 2;
    let cli_start = Instant::now();
    let payload_bytes = env_or("BENCH_PAYLOAD_BYTES", 65_536) as usize;
    let content = if payload_bytes == 0 {
        let out = mesh.publish(origin, "bench-policy");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        None
    } else {
        let file = mesh.root.0.join("payload.bin");
        let body: Vec<u8> = (0..payload_bytes).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&file, body).expect("writing the payload");
        Some(mesh.publish_file(origin, "bench-policy", &file))
    };
    let publish_cli_ms = cli_start.elapsed().as_secs_f64() * 1000.0;
    let converged = mesh.converge(1, Duration::from_secs(120));
    assert!(converged.is_ok(), "not every node got the policy");
    let origin_us = applied_at_us(&mesh, origin).expect("origin logged the change");
    let per_node_ms: Vec<f64> = (0..n)
        .map(|i| {
            (applied_at_us(&mesh, i).expect("node logged the change") - origin_us) as f64 / 1000.0
        })
        .collect();
    let converge_ms = per_node_ms.iter().cloned().fold(0.0, f64::max);
    let mut sorted = per_node_ms.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "policy held by all {n} nodes {converge_ms:.1} ms after the publishing node applied it (median {:.1} ms)",
        sorted[n / 2]
    );

    (converge_ms, publish_cli_ms, content)
}

/// CPU, traffic and messages over one window.
struct Window {
    secs: f64,
    cpu_pct: Vec<f64>,
    rss_mb: Vec<f64>,
    /// The node's own memory (heap, stacks): what each further node costs.
    anon_mb: Vec<f64>,
    /// Pages of the executable and other files mapped: shared by every node run from the
    /// same binary, and counted in each one's RSS.
    file_mb: Vec<f64>,
    /// libp2p stream bytes per node per second, sent and received over all nodes / 2.
    bytes_per_s: f64,
    /// The node's own messages by kind: (messages, bytes) per node per second.
    kinds: BTreeMap<String, (f64, f64)>,
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(0.0, f64::max)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn measure(mesh: &Mesh, n: usize, secs: u64) -> Window {
    let pids: Vec<u64> = (0..n).map(|i| u64::from(mesh.status(i).pid)).collect();
    let bytes = |mesh: &Mesh| -> Vec<u64> {
        (0..n)
            .map(|i| {
                let s = mesh.status(i);
                s.bytes_sent + s.bytes_received
            })
            .collect()
    };
    // Protocol messages sent, summed over the nodes, by kind: (messages, bytes).
    let by_kind = |mesh: &Mesh| -> BTreeMap<String, (u64, u64)> {
        let mut sum: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for i in 0..n {
            for (k, v) in mesh.status(i).messages_sent {
                let e = sum.entry(k).or_default();
                e.0 += v.messages;
                e.1 += v.bytes;
            }
        }
        sum
    };
    let cpu0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let bytes0 = bytes(mesh);
    let kinds0 = by_kind(mesh);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let bytes1 = bytes(mesh);
    let kinds1 = by_kind(mesh);
    let hz = clock_ticks_per_s();
    let cpu_pct =
        cpu0.iter().zip(&cpu1).map(|(a, b)| (b - a) as f64 / hz / elapsed * 100.0).collect();
    // Sent + received over all nodes counts every byte twice (once at each end).
    let total: u64 = bytes0.iter().zip(&bytes1).map(|(a, b)| b - a).sum();
    let per_node = |x: u64| x as f64 / n as f64 / elapsed;
    let kinds = kinds1
        .iter()
        .filter_map(|(k, (m1, b1))| {
            let (m0, b0) = kinds0.get(k).copied().unwrap_or_default();
            (*m1 > m0).then(|| (k.clone(), (per_node(m1 - m0), per_node(b1 - b0))))
        })
        .collect();
    Window {
        secs: elapsed,
        cpu_pct,
        rss_mb: pids.iter().map(|p| rss_mb(*p)).collect(),
        anon_mb: pids.iter().map(|p| status_mb(*p, "RssAnon")).collect(),
        file_mb: pids.iter().map(|p| status_mb(*p, "RssFile")).collect(),
        bytes_per_s: total as f64 / 2.0 / n as f64 / elapsed,
        kinds,
    }
}

/// Prints one window's figures under `name`; returns its JSON fields.
fn report(name: &str, w: &Window) -> serde_json::Map<String, serde_json::Value> {
    println!(
        "{name}_rss_mb      max {:.1}  mean {:.1}   (goal <= 40)",
        max(&w.rss_mb),
        mean(&w.rss_mb)
    );
    println!(
        "  {name}_rss_anon_mb  max {:.1}  mean {:.1}   (the node's own memory: heap, stacks)",
        max(&w.anon_mb),
        mean(&w.anon_mb)
    );
    println!(
        "  {name}_rss_file_mb  max {:.1}  mean {:.1}   (mapped pages of the binary, shared by all nodes)",
        max(&w.file_mb),
        mean(&w.file_mb)
    );
    println!(
        "{name}_cpu_pct     max {:.2}  mean {:.2}   over {:.0} s (goal <= 0.5)",
        max(&w.cpu_pct),
        mean(&w.cpu_pct),
        w.secs
    );
    println!(
        "{name}_bytes_per_s_per_node  {:.0}   (libp2p stream bytes, both directions / 2; goal <= 500)",
        w.bytes_per_s
    );
    // What the node's own protocol sent; the rest of the bytes are libp2p's (gossipsub
    // forwarding and control, Kademlia, identify, ping, stream negotiation).
    let mut kinds = serde_json::Map::new();
    let mut protocol_bps = 0.0;
    for (k, (msgs, bps)) in &w.kinds {
        protocol_bps += bps;
        println!("  {name} {k:<16} {msgs:>8.2} msg/s/node  {bps:>7.1} B/s/node");
        kinds.insert(k.clone(), json!((bps * 10.0).round() / 10.0));
    }
    println!(
        "{name}_protocol_bytes_per_s_per_node  {protocol_bps:.0}   (messages the node sent; the rest is libp2p)"
    );
    let mut out = serde_json::Map::new();
    out.insert(format!("{name}_protocol_bytes_per_s_per_node"), json!(protocol_bps.round()));
    out.insert(format!("{name}_bytes_by_kind"), serde_json::Value::Object(kinds));
    out.insert(format!("{name}_rss_mb_max"), json!((max(&w.rss_mb) * 10.0).round() / 10.0));
    out.insert(format!("{name}_rss_anon_mb_max"), json!((max(&w.anon_mb) * 10.0).round() / 10.0));
    out.insert(format!("{name}_rss_file_mb_max"), json!((max(&w.file_mb) * 10.0).round() / 10.0));
    out.insert(format!("{name}_cpu_pct_max"), json!((max(&w.cpu_pct) * 100.0).round() / 100.0));
    out.insert(format!("{name}_bytes_per_s_per_node"), json!(w.bytes_per_s.round()));
    out
}

fn main() {
    let n = env_or("BENCH_NODES", 30) as usize;
    let idle_s = env_or("BENCH_IDLE_S", 60);
    let mesh = form_mesh(n);
    let (converge_ms, publish_cli_ms, content) = publish_and_converge(&mesh, n);
    if let Some(content) = &content {
        let held = mesh.await_payload(content, Duration::from_secs(120));
        assert!(held.is_ok(), "{held:?}");
    }
    std::thread::sleep(Duration::from_secs(5));
    let idle = measure(&mesh, n, idle_s);
    // A patch whose payload nobody holds: every prefetching node starts waiting for it.
    let out = mesh.publish(n / 2, "bench-missing-payload");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let converged = mesh.converge(2, Duration::from_secs(120));
    assert!(converged.is_ok(), "not every node got the second patch");
    let waiting = measure(&mesh, n, idle_s);

    println!("nodes                      {n}");
    println!("converge_ms                {converge_ms:.1}   (goal <= 2000; from the publishing node applying it)");
    println!("publish_cli_ms             {publish_cli_ms:.1}   (patchmesh patch add: prepare, sign, submit)");
    let mut all = report("idle", &idle);
    all.extend(report("waiting", &waiting));
    all.insert("nodes".into(), json!(n));
    all.insert("converge_ms".into(), json!((converge_ms * 10.0).round() / 10.0));
    println!("{}", serde_json::Value::Object(all));
}
