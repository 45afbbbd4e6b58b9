//! The demo's webhook receiver: a loopback HTTP server that counts Standard Webhooks
//! deliveries per `webhook-id` and event type, and checks each `v1a` signature against the
//! demo nodes' keys.

use base64::Engine;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// What arrived.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Deliveries per (event type, webhook id).
    pub deliveries: BTreeMap<(String, String), u32>,
    /// Deliveries whose signature no demo node made.
    pub unsigned: u32,
}

/// Starts the receiver; returns its URL and what it saw.
pub fn start(node_keys: Vec<[u8; 32]>) -> anyhow::Result<(String, Arc<Mutex<Received>>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/patchmesh", l.local_addr()?);
    let seen = Arc::new(Mutex::new(Received::default()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (seen, keys) = (s2.clone(), node_keys.clone());
            std::thread::spawn(move || {
                let Ok(read) = conn.try_clone() else { return };
                let mut r = BufReader::new(read.take(1 << 20));
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let mut h = BTreeMap::new();
                loop {
                    let mut x = String::new();
                    if r.read_line(&mut x).unwrap_or(0) == 0 || x.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = x.split_once(':') {
                        h.insert(k.trim().to_lowercase(), v.trim().to_string());
                    }
                }
                let n: usize =
                    h.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0).min(1 << 20);
                let mut body = vec![0; n];
                let _ = r.read_exact(&mut body);
                let id = h.get("webhook-id").cloned().unwrap_or_default();
                let msg = format!(
                    "{id}.{}.{}",
                    h.get("webhook-timestamp").cloned().unwrap_or_default(),
                    String::from_utf8_lossy(&body)
                );
                let signed = h
                    .get("webhook-signature")
                    .and_then(|v| v.strip_prefix("v1a,"))
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| <[u8; 64]>::try_from(b).ok())
                    .is_some_and(|sig| {
                        keys.iter().any(|k| {
                            patchmesh_protocol::crypto::verify_external(
                                &patchmesh_protocol::ids::KeyId(*k),
                                msg.as_bytes(),
                                &sig,
                            )
                        })
                    });
                let kind = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(String::from))
                    .unwrap_or_default();
                {
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    *s.deliveries.entry((kind, id)).or_default() += 1;
                    if !signed {
                        s.unsigned += 1;
                    }
                }
                let mut conn = conn;
                let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            });
        }
    });
    Ok((url, seen))
}
