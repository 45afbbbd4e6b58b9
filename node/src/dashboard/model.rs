//! The dashboard's page models: built from the control views by pure functions, rendered by the
//! templates and served as JSON under `/api/v1/` (so the page and its JSON twin can never say
//! different things). Benchmarks call these functions on synthetic views.

use crate::control::{
    AssetBasis, ExposureView, PeerView, ReportBasisView, RolloutView, RolloutsView, StatusView,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A record older than this marks its node silent (a node re-signs its record at least hourly
/// with its inventory).
pub const SILENT_AFTER_MS: u64 = 2 * 3_600_000;

/// Where a node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compliance {
    /// No open finding and no install pending.
    UpToDate,
    /// Open findings or an install pending.
    Pending,
    /// An install failed or was rolled back.
    Failing,
    /// Only findings an exception covers.
    Excepted,
    /// No intel bundle assessed yet.
    Unknown,
}

impl Compliance {
    /// Words for the page.
    pub fn label(self) -> &'static str {
        match self {
            Compliance::UpToDate => "up to date",
            Compliance::Pending => "pending",
            Compliance::Failing => "failing",
            Compliance::Excepted => "excepted",
            Compliance::Unknown => "not assessed",
        }
    }
    fn parse(s: &str) -> Option<Compliance> {
        [
            Compliance::UpToDate,
            Compliance::Pending,
            Compliance::Failing,
            Compliance::Excepted,
            Compliance::Unknown,
        ]
        .into_iter()
        .find(|c| {
            serde_json::to_value(c).ok().and_then(|v| v.as_str().map(|x| x == s)) == Some(true)
        })
    }
}

/// One node of this node's site.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRow {
    /// Node id (hex).
    pub node: String,
    /// Host name (its `host` label), or the id's first 12 characters.
    pub host: String,
    /// Site.
    pub site: String,
    /// Labels, `k=v` joined by spaces.
    pub labels: String,
    /// OS.
    pub os: String,
    /// Ring in the newest rollout that targets it.
    pub ring: Option<u8>,
    /// When it signed its latest record.
    pub last_seen_ms: u64,
    /// Open findings (without an exception).
    pub open_findings: u32,
    /// Of which in KEV.
    pub kev: u32,
    /// Findings an exception covers.
    pub excepted: u32,
    /// Rollouts it is pending or installing in.
    pub pending_updates: u32,
    /// Its state.
    pub compliance: Compliance,
    /// Its record is older than [`SILENT_AFTER_MS`].
    pub silent: bool,
    /// CVEs of its top findings.
    pub top_cves: Vec<String>,
}

/// The nodes table's filter, sort and page (the page URL's query).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeFilter {
    /// Text in host, id, labels or OS.
    #[serde(default)]
    pub q: String,
    /// Site.
    #[serde(default)]
    pub site: String,
    /// Compliance state (`up_to_date`, `pending`, `failing`, `excepted`, `unknown`).
    #[serde(default)]
    pub status: String,
    /// A CVE among its top findings.
    #[serde(default)]
    pub cve: String,
    /// Sort column: host, site, os, ring, last_seen, findings, pending.
    #[serde(default)]
    pub sort: String,
    /// `desc` for descending.
    #[serde(default)]
    pub dir: String,
    /// Page (from 1).
    #[serde(default)]
    pub page: usize,
}

/// Rows per page of the nodes table.
pub const NODES_PER_PAGE: usize = 100;

/// `/nodes`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodesPage {
    /// The filter applied.
    pub filter: NodeFilter,
    /// Members of this site held.
    pub total: usize,
    /// Rows matching the filter.
    pub matched: usize,
    /// This page's rows.
    pub rows: Vec<NodeRow>,
    /// Page number and count.
    pub page: usize,
    /// Pages.
    pub pages: usize,
    /// Other sites and their members (their nodes are summarised, not listed).
    pub other_sites: Vec<(String, u32)>,
}

/// One site on the overview.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteRow {
    /// Site.
    pub site: String,
    /// The serving node's own site.
    pub own: bool,
    /// Members.
    pub members: u32,
    /// Members whose record is fresh (own site only).
    pub online: Option<u32>,
    /// Members whose record is stale (own site only).
    pub silent: Option<u32>,
    /// Members with an open finding.
    pub exposed: u32,
    /// Open KEV findings.
    pub kev: u32,
    /// Open findings by due class.
    pub due: DueRow,
    /// The member that signed the summary (other sites).
    pub author: Option<String>,
}

/// Findings by due class.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct DueRow {
    /// Due in 3 days.
    pub d3: u32,
    /// Due in 14 days.
    pub d14: u32,
    /// Due in 60 days.
    pub d60: u32,
    /// Next window.
    pub window: u32,
    /// No fix: needs an exception.
    pub exception: u32,
}

impl DueRow {
    fn of(c: &patchmesh_protocol::intel::report::DueCounts) -> DueRow {
        DueRow {
            d3: c.days3,
            d14: c.days14,
            d60: c.days60,
            window: c.window,
            exception: c.exception,
        }
    }
    fn add(&mut self, o: DueRow) {
        self.d3 += o.d3;
        self.d14 += o.d14;
        self.d60 += o.d60;
        self.window += o.window;
        self.exception += o.exception;
    }
    /// Sum.
    pub fn total(&self) -> u32 {
        self.d3 + self.d14 + self.d60 + self.window + self.exception
    }
}

/// Nodes by compliance state.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ComplianceCounts {
    /// Up to date.
    pub up_to_date: u32,
    /// Pending.
    pub pending: u32,
    /// Failing.
    pub failing: u32,
    /// Excepted.
    pub excepted: u32,
    /// Not assessed.
    pub unknown: u32,
}

impl ComplianceCounts {
    /// Every node counted.
    pub fn total(&self) -> u32 {
        self.up_to_date + self.pending + self.failing + self.excepted + self.unknown
    }
    /// (label, css class, count, start percent, percent) for the donut and its legend.
    pub fn slices(&self) -> Vec<(&'static str, &'static str, u32, f64, f64)> {
        let total = self.total().max(1) as f64;
        let mut start = 0.0;
        let mut out = Vec::new();
        for (label, class, n) in [
            ("up to date", "ok", self.up_to_date),
            ("pending", "pend", self.pending),
            ("failing", "bad", self.failing),
            ("excepted", "exc", self.excepted),
            ("not assessed", "unk", self.unknown),
        ] {
            let pct = n as f64 * 100.0 / total;
            out.push((label, class, n, start, pct));
            start += pct;
        }
        out
    }
}

/// A rollout in one line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutRow {
    /// Id (hex).
    pub id: String,
    /// Patch name and version.
    pub patch: String,
    /// State (running, halted, …).
    pub state: String,
    /// Rings open.
    pub ring: String,
    /// Succeeded of targeted, all rings.
    pub succeeded: u32,
    /// Targeted, all rings.
    pub targeted: u32,
    /// Failed or rolled back.
    pub failed: u32,
    /// Percent done.
    pub percent: u32,
    /// When it was created.
    pub created_at_ms: u64,
    /// Admin key that signed it (hex, short).
    pub author: String,
    /// Why it waits, if it does.
    pub waiting: Option<String>,
}

/// Mesh health as this node sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MeshHealth {
    /// Connections.
    pub peers_connected: usize,
    /// Of which admitted.
    pub peers_admitted: usize,
    /// Gossip mesh peers on the control, site and summaries topics.
    pub gossip: (usize, usize, usize),
    /// Admin set version.
    pub trust_version: u64,
    /// Catalog changes held.
    pub catalog_changes: usize,
    /// State hash (first 16 hex characters).
    pub state_hash: String,
    /// Records of this site and summaries of other sites held.
    pub records: usize,
    /// Summaries held.
    pub summaries: usize,
    /// Objects refused from peers, all reasons.
    pub refused: u64,
    /// Oldest record of this site, in ms (how far behind the freshest view may be).
    pub oldest_record_age_ms: u64,
    /// Whether the node still hears the rest of the mesh.
    pub reach: crate::control::ReachView,
    /// Uptime.
    pub uptime_ms: u64,
}

/// `/` (overview).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Overview {
    /// Serving node (hex).
    pub node: String,
    /// Its site.
    pub site: String,
    /// Mesh name.
    pub mesh: String,
    /// Its clock.
    pub now_ms: u64,
    /// Sites.
    pub sites: Vec<SiteRow>,
    /// Nodes by compliance (this site per node; other sites from summaries: exposed members
    /// count as pending, the rest as up to date).
    pub compliance: ComplianceCounts,
    /// Open findings by due class, fleet-wide.
    pub due: DueRow,
    /// Open KEV findings, fleet-wide.
    pub kev: u32,
    /// Rollouts running, paused or awaiting approval.
    pub in_flight: Vec<RolloutRow>,
    /// Halted or aborted rollouts.
    pub halts: Vec<RolloutRow>,
    /// Mesh health.
    pub mesh_health: MeshHealth,
    /// Payload bytes this node took from its own site's peers (that did not cross the WAN)
    /// and from other sites.
    pub lan_bytes: u64,
    /// Payload bytes from other sites.
    pub wan_bytes: u64,
}

fn host_of(a: &AssetBasis) -> String {
    a.labels.get("host").cloned().unwrap_or_else(|| a.node[..a.node.len().min(12)].to_string())
}

/// A node row from its signed record.
pub fn node_row(a: &AssetBasis, now_ms: u64) -> NodeRow {
    let (open, kev, excepted, top) = match &a.exposure {
        Some(e) => (
            DueRow::of(&e.counts).total(),
            e.kev,
            e.excepted,
            e.top.iter().map(|t| t.cve.clone()).collect(),
        ),
        None => (0, 0, 0, Vec::new()),
    };
    // Standings as the basis spells them: pending, installing, succeeded, failed, rolledback,
    // nottargeted.
    let pending = a.standings.iter().filter(|s| s.2 == "pending" || s.2 == "installing").count();
    // A member rolled back to its previous version is not failing: the failure stays with the
    // rollout (halted), the node runs what it ran before.
    let failed = a.standings.iter().any(|s| s.2 == "failed");
    let compliance = if failed {
        Compliance::Failing
    } else if a.exposure.is_none() {
        Compliance::Unknown
    } else if open > 0 || pending > 0 {
        Compliance::Pending
    } else if excepted > 0 {
        Compliance::Excepted
    } else {
        Compliance::UpToDate
    };
    NodeRow {
        node: a.node.clone(),
        host: host_of(a),
        site: a.site.clone(),
        labels: a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
        os: a.os.clone(),
        ring: a.standings.iter().filter(|s| s.2 != "nottargeted").map(|s| s.1).next_back(),
        last_seen_ms: a.record_written_at_ms,
        open_findings: open,
        kev,
        excepted,
        pending_updates: pending as u32,
        compliance,
        silent: now_ms.saturating_sub(a.record_written_at_ms) > SILENT_AFTER_MS,
        top_cves: top,
    }
}

/// Filters, sorts and pages this site's nodes.
pub fn nodes_page(basis: &ReportBasisView, filter: NodeFilter, all: bool) -> NodesPage {
    let q = filter.q.trim().to_lowercase();
    let status = Compliance::parse(filter.status.trim());
    let mut rows: Vec<NodeRow> = basis
        .assets
        .iter()
        .map(|a| node_row(a, basis.now_ms))
        .filter(|r| filter.site.is_empty() || r.site == filter.site)
        .filter(|r| status.is_none_or(|s| r.compliance == s))
        .filter(|r| filter.cve.is_empty() || r.top_cves.iter().any(|c| c == filter.cve.trim()))
        .filter(|r| {
            q.is_empty()
                || r.host.to_lowercase().contains(&q)
                || r.node.starts_with(&q)
                || r.labels.to_lowercase().contains(&q)
                || r.os.to_lowercase().contains(&q)
        })
        .collect();
    match filter.sort.as_str() {
        "site" => rows.sort_by(|a, b| a.site.cmp(&b.site).then_with(|| a.host.cmp(&b.host))),
        "os" => rows.sort_by(|a, b| a.os.cmp(&b.os).then_with(|| a.host.cmp(&b.host))),
        "ring" => rows.sort_by(|a, b| a.ring.cmp(&b.ring).then_with(|| a.host.cmp(&b.host))),
        "last_seen" => rows.sort_by_key(|r| r.last_seen_ms),
        "findings" => rows.sort_by_key(|r| (r.open_findings, r.kev)),
        "pending" => rows.sort_by_key(|r| r.pending_updates),
        _ => rows.sort_by(|a, b| a.host.cmp(&b.host)),
    }
    if filter.dir == "desc" {
        rows.reverse();
    }
    let matched = rows.len();
    let pages = matched.div_ceil(NODES_PER_PAGE).max(1);
    let page = filter.page.clamp(1, pages);
    if !all {
        rows = rows.into_iter().skip((page - 1) * NODES_PER_PAGE).take(NODES_PER_PAGE).collect();
    }
    NodesPage {
        filter,
        total: basis.assets.len(),
        matched,
        rows,
        page,
        pages,
        other_sites: basis.sites.iter().map(|s| (s.site.clone(), s.members)).collect(),
    }
}

/// A rollout in one line.
pub fn rollout_row(r: &RolloutView) -> RolloutRow {
    let (mut targeted, mut succeeded, mut failed) = (0u32, 0u32, 0u32);
    for ring in &r.rings {
        targeted += ring.counts.targeted;
        succeeded += ring.counts.succeeded;
        failed += ring.counts.failed + ring.counts.rolled_back;
    }
    RolloutRow {
        id: r.id.clone(),
        patch: r.patch.as_ref().map_or_else(
            || r.content_id[..12].to_string(),
            |p| format!("{} {}", p.name, p.version),
        ),
        state: r.state().replace('_', " "),
        ring: match r.open_rings {
            Some(n) if (n as usize) >= r.rings.len() => "all rings open".into(),
            Some(n) if n > 0 => format!(
                "{} of {} ({})",
                n,
                r.rings.len(),
                r.rings.get(n as usize - 1).map_or("", |g| g.name.as_str())
            ),
            _ => format!("0 of {}", r.rings.len()),
        },
        succeeded,
        targeted,
        failed,
        percent: (succeeded * 100).checked_div(targeted).unwrap_or(0),
        created_at_ms: r.created_at_ms,
        author: r.author[..r.author.len().min(12)].to_string(),
        waiting: r.waiting.clone(),
    }
}

/// The overview.
pub fn overview(
    status: &StatusView,
    basis: &ReportBasisView,
    exposure: &ExposureView,
    rollouts: &RolloutsView,
    lan_wan: (u64, u64),
) -> Overview {
    let mut compliance = ComplianceCounts::default();
    let mut due = DueRow::default();
    let mut kev = 0;
    let (mut online, mut silent, mut exposed) = (0, 0, 0);
    let mut own_due = DueRow::default();
    let mut own_kev = 0;
    let mut oldest = 0u64;
    for a in &basis.assets {
        let r = node_row(a, basis.now_ms);
        oldest = oldest.max(basis.now_ms.saturating_sub(a.record_written_at_ms));
        match r.compliance {
            Compliance::UpToDate => compliance.up_to_date += 1,
            Compliance::Pending => compliance.pending += 1,
            Compliance::Failing => compliance.failing += 1,
            Compliance::Excepted => compliance.excepted += 1,
            Compliance::Unknown => compliance.unknown += 1,
        }
        if r.silent {
            silent += 1
        } else {
            online += 1
        }
        if r.open_findings > 0 {
            exposed += 1;
        }
        if let Some(e) = &a.exposure {
            own_due.add(DueRow::of(&e.counts));
            own_kev += e.kev;
        }
    }
    due.add(own_due);
    kev += own_kev;
    let mut sites = vec![SiteRow {
        site: basis.site.clone(),
        own: true,
        members: basis.assets.len() as u32,
        online: Some(online),
        silent: Some(silent),
        exposed,
        kev: own_kev,
        due: own_due,
        author: None,
    }];
    for s in &basis.sites {
        let d = DueRow::of(&s.exposure.counts);
        due.add(d);
        kev += s.exposure.kev;
        compliance.pending += s.exposure.nodes_exposed.min(s.members);
        compliance.up_to_date += s.members.saturating_sub(s.exposure.nodes_exposed);
        sites.push(SiteRow {
            site: s.site.clone(),
            own: false,
            members: s.members,
            online: None,
            silent: None,
            exposed: s.exposure.nodes_exposed,
            kev: s.exposure.kev,
            due: d,
            author: Some(s.author[..s.author.len().min(12)].to_string()),
        });
    }
    // Sites known only from the exposure view (a summary without a basis row) are skipped:
    // the basis lists every summary this node holds.
    let _ = exposure;
    let rows: Vec<(RolloutRow, &RolloutView)> =
        rollouts.rollouts.iter().map(|r| (rollout_row(r), r)).collect();
    let in_flight = rows
        .iter()
        .filter(|(_, r)| {
            matches!(r.state(), "running" | "paused" | "awaiting_approval")
                && r.rings.iter().any(|g| g.counts.succeeded < g.counts.targeted)
        })
        .map(|(row, _)| row.clone())
        .collect();
    let halts = rows
        .iter()
        .filter(|(_, r)| matches!(r.state(), "halted" | "aborted"))
        .map(|(row, _)| row.clone())
        .collect();
    Overview {
        node: status.node.clone(),
        site: status.site.clone(),
        mesh: status.mesh.clone(),
        now_ms: basis.now_ms,
        sites,
        compliance,
        due,
        kev,
        in_flight,
        halts,
        mesh_health: MeshHealth {
            peers_connected: status.peers_connected,
            peers_admitted: status.peers_admitted,
            gossip: (
                status.gossip_mesh.control,
                status.gossip_mesh.site,
                status.gossip_mesh.summaries,
            ),
            trust_version: status.trust_version,
            catalog_changes: status.catalog_changes,
            state_hash: status.state_hash[..status.state_hash.len().min(16)].to_string(),
            records: status.site_records,
            summaries: status.site_summaries,
            reach: status.reach.clone(),
            refused: status.rejected.values().sum(),
            oldest_record_age_ms: oldest,
            uptime_ms: status.uptime_ms,
        },
        lan_bytes: lan_wan.0,
        wan_bytes: lan_wan.1,
    }
}

/// One CVE across the fleet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VulnRow {
    /// CVE id.
    pub cve: String,
    /// Source package.
    pub source: String,
    /// Risk score 0–100.
    pub score: f64,
    /// Due class (`3d`, `14d`, `60d`, `window`, `exception`).
    pub due: String,
    /// In CISA KEV.
    pub kev: bool,
    /// Fixing version, if one exists.
    pub fixed_version: Option<String>,
    /// Affected nodes per site.
    pub sites: Vec<(String, u32)>,
    /// Affected nodes, all sites.
    pub nodes: u32,
    /// Exceptions naming it (catalog keys).
    pub exceptions: Vec<String>,
}

/// `/vulns`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VulnsPage {
    /// The intel bundle in use.
    pub bundle: Option<String>,
    /// Its age.
    pub bundle_created_at_ms: u64,
    /// Ranked CVEs (the sites' top findings).
    pub rows: Vec<VulnRow>,
    /// Exceptions.
    pub exceptions: Vec<crate::control::ExceptionBasis>,
    /// This node's available updates.
    pub updates: Vec<patchmesh_protocol::intel::apt::Update>,
    /// This node's findings with their score breakdown.
    pub local: Vec<patchmesh_protocol::intel::report::Assessed>,
}

/// The ranked CVEs of every site.
pub fn vulns(
    exposure: &ExposureView,
    basis: &ReportBasisView,
    intel: Option<&crate::control::IntelView>,
) -> VulnsPage {
    let mut by: BTreeMap<(String, String), VulnRow> = BTreeMap::new();
    for s in &exposure.sites {
        for t in &s.exposure.top {
            let row = by.entry((t.cve.clone(), t.source.clone())).or_insert_with(|| VulnRow {
                cve: t.cve.clone(),
                source: t.source.clone(),
                score: t.score_tenths as f64 / 10.0,
                due: t.due.label().to_string(),
                kev: t.kev,
                fixed_version: t.fixed_version.clone(),
                sites: Vec::new(),
                nodes: 0,
                exceptions: basis
                    .exceptions
                    .iter()
                    .filter(|e| e.entry.cve == t.cve)
                    .map(|e| e.key.clone())
                    .collect(),
            });
            row.sites.push((s.site.clone(), t.nodes));
            row.nodes += t.nodes;
            row.score = row.score.max(t.score_tenths as f64 / 10.0);
        }
    }
    let mut rows: Vec<VulnRow> = by.into_values().collect();
    rows.sort_by(|a, b| {
        b.kev.cmp(&a.kev).then(b.score.total_cmp(&a.score)).then(b.nodes.cmp(&a.nodes))
    });
    VulnsPage {
        bundle: exposure.bundle.clone(),
        bundle_created_at_ms: exposure.bundle_created_at_ms,
        rows,
        exceptions: basis.exceptions.clone(),
        updates: intel.map(|i| i.updates.clone()).unwrap_or_default(),
        local: intel.map(|i| i.findings.iter().take(200).cloned().collect()).unwrap_or_default(),
    }
}

/// One member in a rollout's per-node table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutMember {
    /// Node (hex).
    pub node: String,
    /// Host.
    pub host: String,
    /// Ring.
    pub ring: u8,
    /// Status (pending, installing, succeeded, failed, rolledback).
    pub status: String,
}

/// `/rollouts/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutDetail {
    /// The rollout as this node sees it.
    pub rollout: RolloutView,
    /// Its line.
    pub row: RolloutRow,
    /// Why it stopped, in words, if it did.
    pub stopped: Option<String>,
    /// This site's members in it.
    pub members: Vec<RolloutMember>,
    /// The serving node's site.
    pub site: String,
    /// Failure reports held (fleet-wide).
    pub alarms: usize,
}

/// A rollout's detail page.
pub fn rollout_detail(
    r: &RolloutView,
    basis: &ReportBasisView,
    rollouts: &RolloutsView,
) -> RolloutDetail {
    use patchmesh_protocol::rollout::Control;
    let stopped = match &r.control {
        Some(Control::Halted { ring, failures }) => Some(format!(
            "halted in ring {} ({}): {} failure(s) passed its gate",
            ring,
            r.rings.get(*ring as usize).map_or("?", |g| g.name.as_str()),
            failures
        )),
        Some(Control::Aborted) => Some("aborted by an admin: installs are rolled back".into()),
        Some(Control::Paused) => Some("paused by an admin: no new installs start".into()),
        Some(Control::AwaitingApproval) => Some(format!(
            "awaiting approval: {} of {} admin approvals",
            r.approvals.unwrap_or(0),
            r.approvals_needed.unwrap_or(0)
        )),
        _ => None,
    };
    let mut members: Vec<RolloutMember> = basis
        .assets
        .iter()
        .filter_map(|a| {
            let s = a.standings.iter().find(|s| s.0 == r.id && s.2 != "nottargeted")?;
            Some(RolloutMember {
                node: a.node.clone(),
                host: host_of(a),
                ring: s.1,
                status: s.2.clone(),
            })
        })
        .collect();
    members.sort_by(|a, b| a.ring.cmp(&b.ring).then_with(|| a.host.cmp(&b.host)));
    RolloutDetail {
        row: rollout_row(r),
        rollout: r.clone(),
        stopped,
        members,
        site: basis.site.clone(),
        alarms: rollouts.alarms,
    }
}

/// `/sites`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SitesPage {
    /// Sites.
    pub sites: Vec<SiteRow>,
    /// This node's connections.
    pub peers: Vec<PeerView>,
    /// Payload downloads of this node: (content, role lan/wan, lan bytes, wan bytes).
    pub transfers: Vec<(String, String, u64, u64)>,
}
