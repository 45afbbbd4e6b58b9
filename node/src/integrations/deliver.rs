//! The wire formats, and one delivery attempt.

use super::Credential;
use base64::Engine;
use patchmesh_protocol::crypto::SecretKey;
use patchmesh_protocol::integrations::{Event, Sink, SinkKind};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Limit on a whole request (connect, send, answer).
pub const TIMEOUT: Duration = Duration::from_secs(10);
thread_local! {
    /// The request limit in force on this thread (tests shorten it).
    static LIMIT: std::cell::Cell<Duration> = const { std::cell::Cell::new(TIMEOUT) };
}

/// Sets the request limit for deliveries made on this thread.
pub fn set_timeout(d: Duration) {
    LIMIT.with(|l| l.set(d));
}
/// Largest response body read.
pub const RESPONSE_BYTES_MAX: u64 = 64 * 1024;

/// What an attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver took it.
    Delivered,
    /// Try again (after the receiver's `Retry-After`, if it gave one).
    Retry {
        /// Milliseconds the receiver asked to wait.
        after_ms: Option<u64>,
        /// Why.
        why: String,
    },
    /// The receiver is gone (410): stop sending to this sink.
    Disable(String),
    /// This event will never be accepted (4xx, redirect, refused address): dead-letter it.
    Dead(String),
}

/// Who sends, with what.
pub struct Ctx<'a> {
    /// The emitting node's key (webhook `v1a` signatures).
    pub key: &'a SecretKey,
    /// The sink's credential from the node's file.
    pub cred: Option<&'a Credential>,
    /// The emitting node (hex).
    pub node: &'a str,
    /// Its host name.
    pub hostname: &'a str,
}

/// The Standard Webhooks payload.
pub fn webhook_body(e: &Event) -> String {
    serde_json::json!({
        "type": format!("patchmesh.{}", serde_json::to_value(e.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()),
        "timestamp": iso(e.at_ms),
        "data": e,
    })
    .to_string()
}

fn iso(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// `webhook-signature` for a body: `v1a,<ed25519>` by the node's key, or `v1,<HMAC-SHA256>`
/// with the `whsec_` secret.
pub fn webhook_signature(
    id: &str,
    ts: u64,
    body: &str,
    hmac_secret: Option<&str>,
    key: &SecretKey,
) -> Result<String, String> {
    let msg = format!("{id}.{ts}.{body}");
    let b64 = base64::engine::general_purpose::STANDARD;
    match hmac_secret {
        Some(secret) => {
            use hmac::{KeyInit, Mac};
            let raw = secret.strip_prefix("whsec_").unwrap_or(secret);
            let secret = b64
                .decode(raw)
                .map_err(|_| "the HMAC secret is not whsec_ + base64".to_string())?;
            let mut mac =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).map_err(|e| e.to_string())?;
            mac.update(msg.as_bytes());
            Ok(format!("v1,{}", b64.encode(mac.finalize().into_bytes())))
        }
        None => {
            if msg.starts_with("patchmesh/") {
                return Err("an event id cannot start with patchmesh/".into());
            }
            Ok(format!("v1a,{}", b64.encode(key.sign_external(msg.as_bytes()))))
        }
    }
}

/// The receiver's public key for `v1a` signatures, as Standard Webhooks writes it.
pub fn webhook_public_key(key: &SecretKey) -> String {
    format!("whpk_{}", base64::engine::general_purpose::STANDARD.encode(key.public().0))
}

/// The ServiceNow incident fields.
pub fn servicenow_incident(e: &Event, ctx: &Ctx<'_>) -> serde_json::Value {
    let (urgency, impact) = match e.severity.as_str() {
        "critical" => ("1", "1"),
        "error" => ("2", "2"),
        _ => ("3", "3"),
    };
    let ci = e.details.get("hostname").and_then(|h| h.as_str()).unwrap_or(ctx.hostname);
    serde_json::json!({
        "short_description": cut(&format!("patchmesh: {}", e.summary), 160),
        "description": format!("{}\n\nEvent {} at {} ({:?}).\nDetails: {}", e.summary, e.id, iso(e.at_ms), e.kind, e.details),
        "urgency": urgency,
        "impact": impact,
        "cmdb_ci": ci,
        "correlation_id": e.id,
        "correlation_display": "patchmesh",
        "category": "software",
    })
}

/// The PagerDuty Events v2 body.
pub fn pagerduty_event(e: &Event, routing_key: &str, ctx: &Ctx<'_>) -> serde_json::Value {
    serde_json::json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": e.id,
        "payload": {
            "summary": cut(&e.summary, 1024),
            "source": e.node.as_deref().map(|n| &n[..n.len().min(16)]).unwrap_or(ctx.node),
            "severity": e.severity,
            "timestamp": iso(e.at_ms),
            "component": "patchmesh",
            "group": e.site.clone().unwrap_or_default(),
            "class": serde_json::to_value(e.kind).unwrap_or_default(),
            "custom_details": e.details,
        },
    })
}

/// One RFC 5424 message, octet-counted for TCP (RFC 6587).
pub fn syslog_frame(e: &Event, hostname: &str) -> String {
    let sev = match e.severity.as_str() {
        "critical" => 2,
        "error" => 3,
        "warning" => 4,
        _ => 6,
    };
    let pri = 13 * 8 + sev; // facility 13: log audit
    let sd_escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace(']', "\\]");
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let msg = format!(
        "<{pri}>1 {} {} patchmesh - {} [patchmesh@32473 id=\"{}\" node=\"{}\" site=\"{}\"] {}",
        iso(e.at_ms),
        if hostname.is_empty() { "-" } else { hostname },
        cut(&kind, 32),
        sd_escape(&e.id),
        sd_escape(e.node.as_deref().unwrap_or("-")),
        sd_escape(e.site.as_deref().unwrap_or("-")),
        e.summary.replace('\n', " ")
    );
    format!("{} {msg}", msg.len())
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s[..at].to_string()
}

/// Refuses addresses no sink should reach unless the policy allows it: link-local (which
/// includes cloud metadata services at 169.254.169.254), unspecified and multicast.
pub fn check_addresses(addrs: &[SocketAddr], allow_private: bool) -> Result<(), String> {
    if addrs.is_empty() {
        return Err("the name resolves to no address".into());
    }
    if allow_private {
        return Ok(());
    }
    for a in addrs {
        let bad = match a.ip() {
            IpAddr::V4(v) => {
                v.is_link_local() || v.is_unspecified() || v.is_multicast() || v.is_broadcast()
            }
            IpAddr::V6(v) => {
                (v.segments()[0] & 0xffc0) == 0xfe80
                    || v.is_unspecified()
                    || v.is_multicast()
                    || v.segments()[..4] == [0xfd00, 0x0ec2, 0, 0]
                    || v.to_ipv4_mapped().is_some_and(|m| m.is_link_local())
            }
        };
        if bad {
            return Err(format!(
                "{} is a link-local, metadata or unroutable address (allow_private is off)",
                a.ip()
            ));
        }
    }
    Ok(())
}

fn resolve_url(url: &str, allow_private: bool) -> Result<(), String> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url:?} names no host"))?;
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let addrs: Vec<SocketAddr> = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .collect();
    check_addresses(&addrs, allow_private)
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(LIMIT.with(|l| l.get())))
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent("patchmesh")
            .build(),
    )
}

/// What a status code means for the event.
fn judge(status: u16, retry_after: Option<u64>, body: &str) -> Outcome {
    let body = cut(body.trim(), 200);
    match status {
        200..=299 => Outcome::Delivered,
        300..=399 => Outcome::Dead(format!("HTTP {status}: redirects are not followed")),
        410 => Outcome::Disable(format!("HTTP 410 Gone: {body}")),
        408 | 425 | 429 | 500..=599 => {
            Outcome::Retry { after_ms: retry_after, why: format!("HTTP {status} {body}") }
        }
        _ => Outcome::Dead(format!("HTTP {status} {body}")),
    }
}

fn retry_after(r: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let v = r.headers().get("retry-after")?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(|s| s.min(3600) * 1000)
}

fn auth(
    mut req: ureq::RequestBuilder<ureq::typestate::WithBody>,
    cred: Option<&Credential>,
) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
    if let Some(c) = cred {
        if let Some(b) = &c.bearer {
            req = req.header("Authorization", format!("Bearer {b}"));
        } else if let Some(b) = &c.basic {
            req = req.header(
                "Authorization",
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(b)),
            );
        }
    }
    req
}

fn send_json(
    method: &str,
    url: &str,
    body: &str,
    headers: &[(&str, String)],
    cred: Option<&Credential>,
) -> Result<(u16, Option<u64>, String), String> {
    let a = agent();
    let mut req = match method {
        "PATCH" => a.patch(url),
        _ => a.post(url),
    };
    req = req.header("Content-Type", "application/json").header("Accept", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let mut resp = auth(req, cred).send(body).map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let after = retry_after(&resp);
    let text = resp
        .body_mut()
        .with_config()
        .limit(RESPONSE_BYTES_MAX)
        .read_to_string()
        .unwrap_or_default();
    Ok((status, after, text))
}

/// One attempt to deliver `e` to `sink`.
pub fn deliver(sink: &Sink, e: &Event, ctx: &Ctx<'_>, now_ms: u64) -> Outcome {
    let net = |r: Result<(u16, Option<u64>, String), String>| match r {
        Ok((status, after, body)) => judge(status, after, &body),
        Err(why) => Outcome::Retry { after_ms: None, why },
    };
    match sink.kind {
        SinkKind::Webhook => {
            if let Err(why) = resolve_url(&sink.target, sink.allow_private) {
                return Outcome::Retry { after_ms: None, why };
            }
            let body = webhook_body(e);
            let ts = now_ms / 1000;
            let hmac = if sink.hmac {
                match ctx.cred.and_then(|c| c.hmac_secret.as_deref()) {
                    Some(s) => Some(s),
                    None => {
                        return Outcome::Retry {
                            after_ms: None,
                            why: format!(
                                "no hmac_secret for sink {:?} in this node's credentials file",
                                sink.name
                            ),
                        }
                    }
                }
            } else {
                None
            };
            let sig = match webhook_signature(&e.id, ts, &body, hmac, ctx.key) {
                Ok(s) => s,
                Err(why) => return Outcome::Dead(why),
            };
            let headers = [
                ("webhook-id", e.id.clone()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sig),
            ];
            net(send_json("POST", &sink.target, &body, &headers, ctx.cred))
        }
        SinkKind::Pagerduty => {
            if let Err(why) = resolve_url(&sink.target, sink.allow_private) {
                return Outcome::Retry { after_ms: None, why };
            }
            let Some(key) = ctx.cred.and_then(|c| c.routing_key.as_deref()) else {
                return Outcome::Retry {
                    after_ms: None,
                    why: format!(
                        "no routing_key for sink {:?} in this node's credentials file",
                        sink.name
                    ),
                };
            };
            net(send_json(
                "POST",
                &sink.target,
                &pagerduty_event(e, key, ctx).to_string(),
                &[],
                None,
            ))
        }
        SinkKind::Servicenow => {
            if let Err(why) = resolve_url(&sink.target, sink.allow_private) {
                return Outcome::Retry { after_ms: None, why };
            }
            servicenow(sink, e, ctx)
        }
        SinkKind::Syslog => {
            let addrs: Vec<SocketAddr> = match sink.target.to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    return Outcome::Retry {
                        after_ms: None,
                        why: format!("resolving {}: {e}", sink.target),
                    }
                }
            };
            if let Err(why) = check_addresses(&addrs, sink.allow_private) {
                return Outcome::Retry { after_ms: None, why };
            }
            let frame = syslog_frame(e, ctx.hostname);
            let sent = TcpStream::connect_timeout(&addrs[0], TIMEOUT).and_then(|mut s| {
                s.set_write_timeout(Some(TIMEOUT))?;
                s.write_all(frame.as_bytes())?;
                s.flush()
            });
            match sent {
                Ok(()) => Outcome::Delivered,
                Err(err) => {
                    Outcome::Retry { after_ms: None, why: format!("syslog {}: {err}", sink.target) }
                }
            }
        }
        SinkKind::Jsonl => {
            use std::os::unix::fs::OpenOptionsExt;
            let line = serde_json::to_string(e).unwrap_or_default() + "\n";
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&sink.target)
                .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.sync_data()));
            match written {
                Ok(()) => Outcome::Delivered,
                Err(err) => {
                    Outcome::Retry { after_ms: None, why: format!("{}: {err}", sink.target) }
                }
            }
        }
    }
}

/// ServiceNow: find the incident by correlation id and update it, or open one.
fn servicenow(sink: &Sink, e: &Event, ctx: &Ctx<'_>) -> Outcome {
    let base = sink.target.trim_end_matches('/');
    let a = agent();
    let query = format!("{base}/api/now/table/incident?sysparm_query=correlation_id%3D{}&sysparm_fields=sys_id&sysparm_limit=1", e.id);
    let mut req = a.get(&query).header("Accept", "application/json");
    if let Some(c) = ctx.cred {
        if let Some(b) = &c.bearer {
            req = req.header("Authorization", format!("Bearer {b}"));
        } else if let Some(b) = &c.basic {
            req = req.header(
                "Authorization",
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(b)),
            );
        }
    }
    let found = match req.call() {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let after = retry_after(&r);
            let text = r
                .body_mut()
                .with_config()
                .limit(RESPONSE_BYTES_MAX)
                .read_to_string()
                .unwrap_or_default();
            if !(200..300).contains(&status) {
                return judge(status, after, &text);
            }
            serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| {
                v.get("result")?.as_array()?.first()?.get("sys_id")?.as_str().map(String::from)
            })
        }
        Err(err) => return Outcome::Retry { after_ms: None, why: err.to_string() },
    };
    let incident = servicenow_incident(e, ctx);
    let r = match found {
        Some(sys_id) if sys_id.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            let update = serde_json::json!({"work_notes": format!("patchmesh saw this again at {}: {}", iso(e.at_ms), e.summary)});
            send_json(
                "PATCH",
                &format!("{base}/api/now/table/incident/{sys_id}"),
                &update.to_string(),
                &[],
                ctx.cred,
            )
        }
        Some(_) => return Outcome::Dead("ServiceNow answered with a malformed sys_id".into()),
        None => send_json(
            "POST",
            &format!("{base}/api/now/table/incident"),
            &incident.to_string(),
            &[],
            ctx.cred,
        ),
    };
    match r {
        Ok((status, after, body)) => judge(status, after, &body),
        Err(why) => Outcome::Retry { after_ms: None, why },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchmesh_protocol::integrations::{event_id, EventKind};
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// One HTTP request as the receiver saw it.
    #[derive(Debug)]
    struct Seen {
        line: String,
        headers: BTreeMap<String, String>,
        body: String,
    }
    use std::collections::BTreeMap;

    /// A loopback HTTP receiver answering each request with the next scripted response
    /// (status, extra headers, body); `None` hangs without answering.
    fn receiver(
        script: Vec<Option<(u16, Vec<(&'static str, String)>, String)>>,
    ) -> (String, mpsc::Receiver<Seen>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for answer in script {
                let Ok((s, _)) = l.accept() else { return };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut headers = BTreeMap::new();
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap();
                    headers.insert(k.trim().to_lowercase(), v.trim().to_string());
                }
                let n: usize =
                    headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                let mut body = vec![0; n];
                r.read_exact(&mut body).unwrap();
                tx.send(Seen {
                    line: line.trim().to_string(),
                    headers,
                    body: String::from_utf8(body).unwrap(),
                })
                .unwrap();
                match answer {
                    Some((status, extra, body)) => {
                        let mut out = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                            body.len()
                        );
                        for (k, v) in extra {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        out.push_str(&body);
                        let mut s = s;
                        s.write_all(out.as_bytes()).unwrap();
                    }
                    None => std::thread::sleep(Duration::from_secs(5)),
                }
            }
        });
        (url, rx)
    }

    fn event() -> Event {
        Event {
            id: event_id(EventKind::RolloutHalted, &["r1"]),
            kind: EventKind::RolloutHalted,
            node: Some("ab".repeat(32)),
            site: Some("branch-1".into()),
            summary: "rollout r1 halted at ring 0 after 1 failure(s)".into(),
            severity: "critical".into(),
            at_ms: 1_800_000_000_000,
            details: serde_json::json!({"hostname": "pos-1"}),
            fleet_wide: true,
        }
    }

    fn sink(kind: SinkKind, target: &str) -> Sink {
        Sink {
            name: "s".into(),
            kind,
            target: target.into(),
            events: vec![],
            emitters: Default::default(),
            hmac: false,
            allow_private: false,
        }
    }

    fn ctx<'a>(key: &'a SecretKey, cred: Option<&'a Credential>) -> Ctx<'a> {
        Ctx { key, cred, node: "cd", hostname: "pos-9" }
    }

    #[test]
    fn a_webhook_carries_a_standard_signature_by_the_node_key() {
        let key = SecretKey::from_seed([3; 32]);
        let (url, rx) = receiver(vec![Some((204, vec![], String::new()))]);
        let e = event();
        assert_eq!(
            deliver(&sink(SinkKind::Webhook, &url), &e, &ctx(&key, None), 1_800_000_001_000),
            Outcome::Delivered
        );
        let seen = rx.recv().unwrap();
        assert_eq!(seen.headers["webhook-id"], e.id);
        assert_eq!(seen.headers["webhook-timestamp"], "1800000001");
        let sig = seen.headers["webhook-signature"].strip_prefix("v1a,").unwrap();
        let sig: [u8; 64] =
            base64::engine::general_purpose::STANDARD.decode(sig).unwrap().try_into().unwrap();
        let msg = format!("{}.{}.{}", e.id, 1_800_000_001, seen.body);
        assert!(patchmesh_protocol::crypto::verify_external(&key.public(), msg.as_bytes(), &sig));
        let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
        assert_eq!(body["type"], "patchmesh.rollout_halted");
        assert_eq!(body["data"]["id"], e.id);
    }

    #[test]
    fn an_hmac_webhook_signs_with_the_secret() {
        use hmac::{KeyInit, Mac};
        let key = SecretKey::from_seed([3; 32]);
        let secret =
            base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdef0123456789abcdef");
        let cred = Credential {
            hmac_secret: Some(format!("whsec_{secret}")),
            bearer: Some("tok".into()),
            ..Default::default()
        };
        let (url, rx) = receiver(vec![Some((200, vec![], String::new()))]);
        let mut s = sink(SinkKind::Webhook, &url);
        s.hmac = true;
        assert_eq!(
            deliver(&s, &event(), &ctx(&key, Some(&cred)), 1_800_000_001_000),
            Outcome::Delivered
        );
        let seen = rx.recv().unwrap();
        assert_eq!(seen.headers["authorization"], "Bearer tok");
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef")
                .unwrap();
        mac.update(format!("{}.1800000001.{}", event().id, seen.body).as_bytes());
        let want = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(seen.headers["webhook-signature"], want);
    }

    #[test]
    fn status_codes_mean_retry_disable_or_dead() {
        let key = SecretKey::from_seed([3; 32]);
        let (url, _rx) = receiver(vec![
            Some((503, vec![("Retry-After", "7".into())], "busy".into())),
            Some((429, vec![], String::new())),
            Some((410, vec![], "gone".into())),
            Some((302, vec![("Location", "http://169.254.169.254/".into())], String::new())),
            Some((400, vec![], "bad".into())),
        ]);
        let s = sink(SinkKind::Webhook, &url);
        let c = ctx(&key, None);
        assert_eq!(
            deliver(&s, &event(), &c, 0),
            Outcome::Retry { after_ms: Some(7000), why: "HTTP 503 busy".into() }
        );
        assert!(matches!(deliver(&s, &event(), &c, 0), Outcome::Retry { after_ms: None, .. }));
        assert_eq!(deliver(&s, &event(), &c, 0), Outcome::Disable("HTTP 410 Gone: gone".into()));
        let redirected = deliver(&s, &event(), &c, 0);
        assert!(
            matches!(&redirected, Outcome::Dead(w) if w.contains("redirects are not followed")),
            "{redirected:?}"
        );
        assert!(
            matches!(deliver(&s, &event(), &c, 0), Outcome::Dead(w) if w.starts_with("HTTP 400"))
        );
    }

    #[test]
    fn a_receiver_that_hangs_times_out_and_is_retried() {
        let key = SecretKey::from_seed([3; 32]);
        let (url, _rx) = receiver(vec![None]);
        set_timeout(Duration::from_millis(500));
        let started = std::time::Instant::now();
        let r = deliver(&sink(SinkKind::Webhook, &url), &event(), &ctx(&key, None), 0);
        assert!(matches!(r, Outcome::Retry { .. }), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(4), "the limit cut the request short");
    }

    #[test]
    fn link_local_and_metadata_addresses_are_refused_unless_allowed() {
        let key = SecretKey::from_seed([3; 32]);
        let r = deliver(
            &sink(SinkKind::Webhook, "http://169.254.169.254/latest"),
            &event(),
            &ctx(&key, None),
            0,
        );
        assert!(matches!(&r, Outcome::Retry { why, .. } if why.contains("link-local")), "{r:?}");
        let v6: SocketAddr = "[fe80::1]:80".parse().unwrap();
        assert!(check_addresses(&[v6], false).is_err());
        assert!(check_addresses(&[v6], true).is_ok());
        assert!(check_addresses(&["127.0.0.1:80".parse().unwrap()], false).is_ok());
    }

    #[test]
    fn servicenow_opens_one_incident_and_updates_it_after() {
        let key = SecretKey::from_seed([3; 32]);
        let cred = Credential { basic: Some("svc:pw".into()), ..Default::default() };
        let (url, rx) = receiver(vec![
            Some((200, vec![], r#"{"result":[]}"#.into())),
            Some((201, vec![], r#"{"result":{"sys_id":"abc123"}}"#.into())),
            Some((200, vec![], r#"{"result":[{"sys_id":"abc123"}]}"#.into())),
            Some((200, vec![], "{}".into())),
        ]);
        let s = sink(SinkKind::Servicenow, &url);
        let e = event();
        assert_eq!(deliver(&s, &e, &ctx(&key, Some(&cred)), 0), Outcome::Delivered);
        let lookup = rx.recv().unwrap();
        assert!(
            lookup.line.starts_with(&format!(
                "GET /api/now/table/incident?sysparm_query=correlation_id%3D{}",
                e.id
            )),
            "{}",
            lookup.line
        );
        assert_eq!(
            lookup.headers["authorization"],
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("svc:pw"))
        );
        let create = rx.recv().unwrap();
        assert!(create.line.starts_with("POST /api/now/table/incident "), "{}", create.line);
        let inc: serde_json::Value = serde_json::from_str(&create.body).unwrap();
        for field in [
            "short_description",
            "description",
            "urgency",
            "impact",
            "cmdb_ci",
            "correlation_id",
            "correlation_display",
        ] {
            assert!(inc.get(field).is_some(), "{field} in {inc}");
        }
        assert_eq!(
            (inc["correlation_id"].as_str(), inc["correlation_display"].as_str()),
            (Some(e.id.as_str()), Some("patchmesh"))
        );
        assert_eq!(
            (inc["urgency"].as_str(), inc["impact"].as_str(), inc["cmdb_ci"].as_str()),
            (Some("1"), Some("1"), Some("pos-1"))
        );
        // The same event again: found by correlation id and updated, not a second incident.
        assert_eq!(deliver(&s, &e, &ctx(&key, Some(&cred)), 0), Outcome::Delivered);
        let _ = rx.recv().unwrap();
        let update = rx.recv().unwrap();
        assert!(
            update.line.starts_with("PATCH /api/now/table/incident/abc123 "),
            "{}",
            update.line
        );
    }

    #[test]
    fn pagerduty_events_have_the_v2_shape_with_the_event_id_as_dedup_key() {
        let key = SecretKey::from_seed([3; 32]);
        let cred = Credential { routing_key: Some("R0UT1NG".into()), ..Default::default() };
        let (url, rx) = receiver(vec![Some((202, vec![], r#"{"status":"success"}"#.into()))]);
        let e = event();
        assert_eq!(
            deliver(
                &sink(SinkKind::Pagerduty, &format!("{url}/v2/enqueue")),
                &e,
                &ctx(&key, Some(&cred)),
                0
            ),
            Outcome::Delivered
        );
        let seen = rx.recv().unwrap();
        assert!(seen.line.starts_with("POST /v2/enqueue "));
        let b: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
        assert_eq!(
            (b["routing_key"].as_str(), b["event_action"].as_str(), b["dedup_key"].as_str()),
            (Some("R0UT1NG"), Some("trigger"), Some(e.id.as_str()))
        );
        let p = &b["payload"];
        assert_eq!(
            (p["severity"].as_str(), p["summary"].as_str()),
            (Some("critical"), Some(e.summary.as_str()))
        );
        assert!(
            p["source"].is_string()
                && p["timestamp"].is_string()
                && p["custom_details"].is_object()
        );
        // Without its routing key the node waits for the credentials file to name it.
        assert!(matches!(
            deliver(&sink(SinkKind::Pagerduty, &url), &e, &ctx(&key, None), 0),
            Outcome::Retry { .. }
        ));
    }

    #[test]
    fn syslog_frames_are_octet_counted_rfc5424_and_jsonl_appends() {
        let key = SecretKey::from_seed([3; 32]);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut all = String::new();
            s.read_to_string(&mut all).unwrap();
            all
        });
        assert_eq!(
            deliver(&sink(SinkKind::Syslog, &addr), &event(), &ctx(&key, None), 0),
            Outcome::Delivered
        );
        let frame = t.join().unwrap();
        let (len, msg) = frame.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<106>1 2027-01-15T08:00:00Z pos-9 patchmesh - rollout_halted [patchmesh@32473 id=\""), "{msg}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let s = sink(SinkKind::Jsonl, path.to_str().unwrap());
        assert_eq!(deliver(&s, &event(), &ctx(&key, None), 0), Outcome::Delivered);
        assert_eq!(deliver(&s, &event(), &ctx(&key, None), 0), Outcome::Delivered);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| serde_json::from_str::<Event>(l).is_ok()));
    }
}
