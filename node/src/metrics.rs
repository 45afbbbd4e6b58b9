//! `/metrics`: OpenMetrics for Prometheus, in the same registry as libp2p's own metrics.
//!
//! The daemon fills a [`Snapshot`] from its views when scraped, and the registered
//! [`Collector`] encodes it. Every label takes its values from small fixed sets (reasons,
//! message kinds, states, steps, due classes), never node ids, so the series count stays
//! bounded whatever the fleet's size.

use crate::control::{ContentListView, ExposureView, IntegrationsView, RolloutsView, StatusView};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

type Labels = Vec<(String, String)>;

/// What the node's own metric families say at one scrape.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Build version.
    pub version: String,
    /// (connected, admitted).
    pub peers: (u64, u64),
    /// Protocol messages sent per kind: (messages, bytes).
    pub messages_sent: BTreeMap<String, (u64, u64)>,
    /// Objects received from peers, by verdict (`accepted`, or the refusal reason).
    pub verdicts: BTreeMap<String, u64>,
    /// Transport bytes (sent, received).
    pub transport: (u64, u64),
    /// Payload bytes received per link (`lan`, `wan`).
    pub payload_received: BTreeMap<&'static str, u64>,
    /// Payloads by download state.
    pub downloads: BTreeMap<String, u64>,
    /// This node's installs by step and outcome (`ok`, `failed`).
    pub installs: BTreeMap<(String, &'static str), u64>,
    /// Fleet members across rollouts by status, as this node counts them.
    pub ring_members: BTreeMap<&'static str, u64>,
    /// Rollouts by state.
    pub rollouts: BTreeMap<String, u64>,
    /// Open findings by due class, fleet-wide.
    pub findings: BTreeMap<&'static str, u64>,
    /// Open KEV findings, fleet-wide.
    pub kev: u64,
    /// Seconds since this node's last signed audit checkpoint.
    pub audit_checkpoint_age_s: Option<f64>,
    /// Integration events by outcome (`pending`, `delivered`, `dead`).
    pub deliveries: BTreeMap<&'static str, u64>,
    /// Sites known and members of this node's site.
    pub sites: u64,
    /// Uptime.
    pub uptime_s: f64,
    /// The node's reach state (`in_touch`, `behind`, `cut_off`, …).
    pub reach: String,
}

/// Builds a snapshot from the node's views (pure: the benchmark calls it on synthetic views).
pub fn snapshot(
    status: &StatusView,
    rollouts: &RolloutsView,
    exposure: &ExposureView,
    integrations: &IntegrationsView,
    contents: &ContentListView,
    lan_wan: (u64, u64),
    audit_checkpoint_at_ms: Option<u64>,
    now_ms: u64,
) -> Snapshot {
    let mut s = Snapshot {
        version: env!("CARGO_PKG_VERSION").to_string(),
        peers: (status.peers_connected as u64, status.peers_admitted as u64),
        transport: (status.bytes_sent, status.bytes_received),
        uptime_s: status.uptime_ms as f64 / 1000.0,
        reach: status.reach.state.clone(),
        sites: exposure.sites.len() as u64,
        audit_checkpoint_age_s: audit_checkpoint_at_ms
            .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0),
        ..Snapshot::default()
    };
    for (k, m) in &status.messages_sent {
        s.messages_sent.insert(k.clone(), (m.messages, m.bytes));
    }
    s.verdicts.insert("accepted".into(), status.accepted);
    for (reason, n) in &status.rejected {
        s.verdicts.insert(reason.clone(), *n);
    }
    s.verdicts.insert("unadmitted".into(), status.unadmitted_dropped);
    s.payload_received.insert("lan", lan_wan.0);
    s.payload_received.insert("wan", lan_wan.1);
    for c in &contents.contents {
        *s.downloads.entry(c.state.clone()).or_default() += 1;
    }
    for r in &rollouts.rollouts {
        *s.rollouts.entry(r.state().to_string()).or_default() += 1;
        for g in &r.rings {
            let c = &g.counts;
            for (k, v) in [
                ("pending", c.pending),
                ("installing", c.installing),
                ("soaking", c.soaking),
                ("succeeded", c.succeeded),
                ("failed", c.failed),
                ("rolled_back", c.rolled_back),
            ] {
                *s.ring_members.entry(k).or_default() += u64::from(v);
            }
        }
        if let Some(l) = &r.local {
            let outcome = if l.failed { "failed" } else { "ok" };
            *s.installs.entry((l.step.clone(), outcome)).or_default() += 1;
        }
    }
    for site in &exposure.sites {
        let c = &site.exposure.counts;
        for (k, v) in [
            ("3d", c.days3),
            ("14d", c.days14),
            ("60d", c.days60),
            ("window", c.window),
            ("exception", c.exception),
        ] {
            *s.findings.entry(k).or_default() += u64::from(v);
        }
        s.kev += u64::from(site.exposure.kev);
    }
    s.deliveries.insert("pending", integrations.pending.len() as u64);
    s.deliveries.insert("delivered", integrations.delivered as u64);
    s.deliveries.insert("dead", integrations.dead as u64);
    s
}

/// The collector registered in the daemon's registry.
#[derive(Clone, Debug, Default)]
pub struct Collector(pub Arc<Mutex<Snapshot>>);

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn gauges<'a, V: Into<f64> + Copy>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> Result<(), std::fmt::Error> {
    let mut me =
        e.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
    for (labels, v) in rows {
        let g = ConstGauge::new(v.into());
        g.encode(me.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut me =
        e.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(me.encode_family(&labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        gauges(
            &mut e,
            "patchmesh_build_info",
            "Build of this node",
            [(l(&[("version", &s.version)]), 1.0)],
        )?;
        gauges(
            &mut e,
            "patchmesh_uptime_seconds",
            "Seconds since the node started",
            [(l(&[]), s.uptime_s)],
        )?;
        gauges(
            &mut e,
            "patchmesh_peers",
            "Connections, and those whose admission certificate verified",
            [
                (l(&[("kind", "connected")]), s.peers.0 as f64),
                (l(&[("kind", "admitted")]), s.peers.1 as f64),
            ],
        )?;
        counters(
            &mut e,
            "patchmesh_messages_sent",
            "Protocol messages sent, by kind",
            s.messages_sent.iter().map(|(k, (m, _))| (l(&[("kind", k)]), *m)),
        )?;
        counters(
            &mut e,
            "patchmesh_message_bytes_sent",
            "Encoded bytes of protocol messages sent, by kind",
            s.messages_sent.iter().map(|(k, (_, b))| (l(&[("kind", k)]), *b)),
        )?;
        counters(
            &mut e,
            "patchmesh_objects_received",
            "Objects received from peers by verdict: accepted, or why refused",
            s.verdicts.iter().map(|(k, v)| (l(&[("verdict", k)]), *v)),
        )?;
        counters(
            &mut e,
            "patchmesh_transport_bytes",
            "Transport bytes by direction",
            [
                (l(&[("direction", "sent")]), s.transport.0),
                (l(&[("direction", "received")]), s.transport.1),
            ],
        )?;
        counters(
            &mut e,
            "patchmesh_payload_bytes_received",
            "Payload bytes received, from this site (lan) or other sites (wan)",
            s.payload_received
                .iter()
                .map(|(k, v)| (l(&[("link", k), ("direction", "received")]), *v)),
        )?;
        gauges(
            &mut e,
            "patchmesh_downloads",
            "Payloads of this node by download state",
            s.downloads.iter().map(|(k, v)| (l(&[("state", k)]), *v as f64)),
        )?;
        gauges(
            &mut e,
            "patchmesh_installs",
            "This node's installs by journal step and outcome",
            s.installs.iter().map(|((st, o), v)| (l(&[("step", st), ("outcome", o)]), *v as f64)),
        )?;
        gauges(
            &mut e,
            "patchmesh_rollout_members",
            "Targeted nodes across rollouts by status, as this node counts them",
            s.ring_members.iter().map(|(k, v)| (l(&[("status", k)]), *v as f64)),
        )?;
        gauges(
            &mut e,
            "patchmesh_rollouts",
            "Rollouts by state",
            s.rollouts.iter().map(|(k, v)| (l(&[("state", k)]), *v as f64)),
        )?;
        gauges(
            &mut e,
            "patchmesh_findings_open",
            "Open findings fleet-wide by due class",
            s.findings.iter().map(|(k, v)| (l(&[("due", k)]), *v as f64)),
        )?;
        gauges(
            &mut e,
            "patchmesh_findings_kev",
            "Open findings in CISA KEV, fleet-wide",
            [(l(&[]), s.kev as f64)],
        )?;
        if let Some(age) = s.audit_checkpoint_age_s {
            gauges(
                &mut e,
                "patchmesh_audit_checkpoint_age_seconds",
                "Seconds since this node signed its last audit checkpoint",
                [(l(&[]), age)],
            )?;
        }
        gauges(
            &mut e,
            "patchmesh_integration_events",
            "Integration events of this node's outbox by outcome",
            s.deliveries.iter().map(|(k, v)| (l(&[("outcome", k)]), *v as f64)),
        )?;
        gauges(&mut e, "patchmesh_sites", "Sites this node knows", [(l(&[]), s.sites as f64)])?;
        let states = ["alone", "listening", "in_touch", "behind", "cut_off"];
        gauges(
            &mut e,
            "patchmesh_reach",
            "1 for the node's reach into the rest of the mesh; behind and cut_off hold new installs",
            states.map(|st| (l(&[("state", st)]), if s.reach == st { 1.0 } else { 0.0 })),
        )?;
        Ok(())
    }
}

/// Encodes a registry as OpenMetrics text.
pub fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        text.clear();
    }
    text
}

/// Serves `GET /metrics` with a bearer token, asking the daemon for the encoded registry.
pub async fn serve(
    listener: tokio::net::TcpListener,
    token: String,
    ctl: tokio::sync::mpsc::Sender<(
        crate::control::Request,
        tokio::sync::oneshot::Sender<serde_json::Value>,
    )>,
) -> std::io::Result<()> {
    use axum::http::{header, HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let want = blake3::hash(format!("Bearer {token}").as_bytes());
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move |headers: HeaderMap| {
                let ctl = ctl.clone();
                async move {
                    let given = headers
                        .get(header::AUTHORIZATION)
                        .map(|v| blake3::hash(v.as_bytes()))
                        .unwrap_or_else(|| blake3::hash(b""));
                    // Compared as hashes: equal-length, constant-time (blake3::Hash's Eq).
                    if given != want {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Bearer")],
                            "a bearer token is needed (the node's metrics token file)\n",
                        )
                            .into_response();
                    }
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    if ctl.send((crate::control::Request::Metrics, tx)).await.is_err() {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    match tokio::time::timeout(std::time::Duration::from_secs(10), rx).await {
                        Ok(Ok(v)) if v["ok"].as_bool() == Some(true) => (
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            v["result"].as_str().unwrap_or("").to_string(),
                        )
                            .into_response(),
                        _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    }
                }
            }),
        )
        .layer(tower::limit::ConcurrencyLimitLayer::new(4))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(1024));
    axum::serve(listener, app).await
}
