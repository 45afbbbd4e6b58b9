//! Integrations on real node processes: a webhook receiver on loopback that fails with 503
//! first, 1,000 events that every node of the site holds, the elected emitter killed with
//! SIGKILL in the middle of the burst, and another node finishing the delivery: every event id
//! arrives, each signed by a node of the mesh.

use base64::Engine;
use patchmesh_tests::{serial, wait_for, Mesh};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deliveries per event id, and which node key signed each.
#[derive(Default)]
struct Seen {
    by_id: BTreeMap<String, u32>,
    by_signer: BTreeMap<String, u32>,
    unsigned: u32,
    refused_503: u32,
}

/// A Standard Webhooks receiver: 503 until `recover`, then 200; verifies `v1a` signatures
/// against the given node keys.
fn receiver(keys: Vec<String>, recover: Instant) -> (String, Arc<Mutex<Seen>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let (seen, keys) = (s2.clone(), keys.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    return;
                }
                let mut h = BTreeMap::new();
                loop {
                    let mut x = String::new();
                    if r.read_line(&mut x).is_err() || x.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = x.split_once(':') {
                        h.insert(k.trim().to_lowercase(), v.trim().to_string());
                    }
                }
                let n: usize = h.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                let mut body = vec![0; n];
                let _ = r.read_exact(&mut body);
                let ok = Instant::now() >= recover;
                let mut s = seen.lock().unwrap();
                if ok {
                    let id = h.get("webhook-id").cloned().unwrap_or_default();
                    let msg = format!(
                        "{id}.{}.{}",
                        h.get("webhook-timestamp").cloned().unwrap_or_default(),
                        String::from_utf8_lossy(&body)
                    );
                    let sig = h
                        .get("webhook-signature")
                        .and_then(|v| v.strip_prefix("v1a,"))
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .and_then(|b| <[u8; 64]>::try_from(b).ok());
                    let signer = sig.and_then(|sig| {
                        keys.iter().find(|k| {
                            let mut key = [0u8; 32];
                            hex::decode_to_slice(k.as_str(), &mut key).is_ok()
                                && patchmesh_protocol::crypto::verify_external(
                                    &patchmesh_protocol::ids::KeyId(key),
                                    msg.as_bytes(),
                                    &sig,
                                )
                        })
                    });
                    match signer {
                        Some(k) => *s.by_signer.entry(k.clone()).or_default() += 1,
                        None => s.unsigned += 1,
                    }
                    *s.by_id.entry(id).or_default() += 1;
                } else {
                    s.refused_503 += 1;
                }
                drop(s);
                let status = if ok { "200 OK" } else { "503 Service Unavailable" };
                let mut conn = conn;
                let _ = conn.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            });
        }
    });
    (url, seen)
}

#[test]
fn the_elected_emitter_killed_mid_burst_another_delivers_every_event() {
    let _g = serial();
    const EVENTS: usize = 1000;
    let mut m = Mesh::new("integrations", 3, 1);
    for i in 0..3 {
        m.node_env.insert(i, vec![("PATCHMESH_TEST_EVENTS".into(), EVENTS.to_string())]);
    }
    m.start_all();
    let keys: Vec<String> = m.nodes.iter().map(|n| n.key.clone()).collect();
    // `scripts/bench-integrations.sh` runs this with the receiver down for 30 s.
    let down_s: u64 =
        std::env::var("PATCHMESH_RECEIVER_DOWN_S").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let started = Instant::now();
    let (url, seen) = receiver(keys.clone(), started + Duration::from_secs(down_s));
    let policy = m.root.0.join("policy.toml");
    std::fs::write(&policy, format!("silent_after_ms = 0\n\n[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\ntarget = \"{url}\"\n")).unwrap();
    let out = m.cli_at(
        0,
        &["integrations", "set", &policy.display().to_string(), "--admin-key", &m.admin_key()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Deliveries start after the receiver recovers; kill whoever sends once 200 arrived.
    let emitter = wait_for(Duration::from_secs(60 + down_s), || {
        let s = seen.lock().unwrap();
        (s.by_id.len() >= 200)
            .then(|| s.by_signer.iter().max_by_key(|(_, n)| **n).map(|(k, _)| k.clone()))
            .flatten()
    })
    .unwrap_or_else(|| panic!("no deliveries after recovery:\n{}", m.log(0)));
    let before = seen.lock().unwrap().by_id.len();
    let killed_at = Instant::now();
    let dead = keys.iter().position(|k| *k == emitter).unwrap();
    m.kill(dead);
    let done = wait_for(Duration::from_secs(120), || {
        (seen.lock().unwrap().by_id.len() >= EVENTS).then_some(())
    });
    let all_in = killed_at.elapsed();
    let s = seen.lock().unwrap();
    let duplicates: u32 = s.by_id.values().map(|n| n - 1).sum();
    println!(
        "{}",
        serde_json::json!({
            "events": EVENTS, "receiver_down_s": down_s, "answers_503": s.refused_503,
            "delivered_before_kill": before, "distinct_ids": s.by_id.len(), "duplicates": duplicates,
            "deliveries_by_node": s.by_signer.values().collect::<Vec<_>>(),
            "kill_to_all_delivered_ms": all_in.as_millis() as u64,
        })
    );
    eprintln!(
        "503 answers before recovery: {}; delivered before the kill: {before}; distinct ids {}; duplicates {duplicates}; by signer {:?}",
        s.refused_503,
        s.by_id.len(),
        s.by_signer.values().collect::<Vec<_>>()
    );
    assert!(
        done.is_some(),
        "{} of {EVENTS} events arrived after the emitter died:\n{}",
        s.by_id.len(),
        m.log((dead + 1) % 3)
    );
    assert_eq!(s.by_id.len(), EVENTS, "every event id arrived");
    assert_eq!(s.unsigned, 0, "every delivery is signed by a node of the mesh");
    assert!(s.refused_503 > 0, "the receiver refused deliveries before it recovered");
    assert!(s.by_signer.len() >= 2, "another node took over: {:?}", s.by_signer);
}
