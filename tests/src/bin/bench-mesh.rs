//! `scripts/bench-mesh.sh`: 30 real node processes on loopback; one policy published; the time
//! until all hold it; then idle RSS, CPU and traffic per node.
//!
//! Convergence is read from the nodes' own JSON logs: each logs `catalog changed` with a
//! microsecond timestamp when it applies the change, and all run on this machine's clock, so
//! `converge_ms` = last node's timestamp − the publishing node's timestamp. The nodes run the
//! production defaults (anti-entropy every 10 s, summaries every 30 s): idle figures are what a
//! quiet fleet costs.
//!
//! The published patch names a payload nobody holds, so the idle window includes what a fleet
//! waiting for a payload costs (questions to site members, provider look-ups, both backing off).
//! With `BENCH_PAYLOAD_BYTES=N` the patch carries a real N-byte payload instead, which every
//! node fetches before the idle window: a fleet with nothing to do.
//!
//! Environment: `BENCH_NODES` (default 30), `BENCH_IDLE_S` (default 60), `BENCH_PAYLOAD_BYTES`
//! (default 0: a payload nobody holds).

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

fn rss_mb(pid: u64) -> f64 {
    proc_field(pid, "status")
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
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
    let payload_bytes = env_or("BENCH_PAYLOAD_BYTES", 0) as usize;
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
    let bytes0 = bytes(&mesh);
    let kinds0 = by_kind(&mesh);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_s));
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let bytes1 = bytes(&mesh);
    let kinds1 = by_kind(&mesh);
    let hz = clock_ticks_per_s();
    let cpu_pct: Vec<f64> =
        cpu0.iter().zip(&cpu1).map(|(a, b)| (b - a) as f64 / hz / elapsed * 100.0).collect();
    let rss: Vec<f64> = pids.iter().map(|p| rss_mb(*p)).collect();
    // Sent + received over all nodes counts every byte twice (once at each end).
    let total: u64 = bytes0.iter().zip(&bytes1).map(|(a, b)| b - a).sum();
    let per_node_bps = total as f64 / 2.0 / n as f64 / elapsed;
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!("nodes                      {n}");
    println!("converge_ms                {converge_ms:.1}   (goal <= 2000; from the publishing node applying it)");
    println!("publish_cli_ms             {publish_cli_ms:.1}   (patchmesh patch add: prepare, sign, submit)");
    println!("idle_rss_mb      max {:.1}  mean {:.1}   (goal <= 40)", max(&rss), mean(&rss));
    println!(
        "idle_cpu_pct     max {:.2}  mean {:.2}   over {elapsed:.0} s (goal <= 1)",
        max(&cpu_pct),
        mean(&cpu_pct)
    );
    println!(
        "idle_bytes_per_s_per_node  {per_node_bps:.0}   (libp2p stream bytes, both directions / 2)"
    );
    // What the node's own protocol sent while idle; the rest of the bytes are libp2p's
    // (gossipsub control, Kademlia, identify, ping, QUIC streams).
    let mut idle_kinds = serde_json::Map::new();
    let mut protocol_bps = 0.0;
    for (k, (m1, b1)) in &kinds1 {
        let (m0, b0) = kinds0.get(k).copied().unwrap_or_default();
        if m1 > &m0 {
            let bps = (b1 - b0) as f64 / n as f64 / elapsed;
            protocol_bps += bps;
            println!(
                "  idle {k:<16} {:>8.2} msg/s/node  {bps:>7.1} B/s/node",
                (m1 - m0) as f64 / n as f64 / elapsed
            );
            idle_kinds.insert(k.clone(), json!((bps * 10.0).round() / 10.0));
        }
    }
    println!(
        "idle_protocol_bytes_per_s_per_node  {protocol_bps:.0}   (messages the node sent; the rest is libp2p)"
    );
    println!(
        "{}",
        json!({
            "idle_protocol_bytes_per_s_per_node": protocol_bps.round(),
            "idle_bytes_by_kind": idle_kinds,
            "nodes": n,
            "converge_ms": (converge_ms * 10.0).round() / 10.0,
            "idle_rss_mb_max": (max(&rss) * 10.0).round() / 10.0,
            "idle_cpu_pct_max": (max(&cpu_pct) * 100.0).round() / 100.0,
            "idle_bytes_per_s_per_node": per_node_bps.round(),
        })
    );
}
