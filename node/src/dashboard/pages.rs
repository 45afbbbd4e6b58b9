//! The pages: askama templates (compiled and auto-escaped) over the page models.

use super::model::{NodeRow, NodesPage, Overview, RolloutDetail, RolloutRow, SitesPage, VulnsPage};
use super::server::{AdminPage, AuditPage, NodeDetail, PatchesPage};
use super::ProposalView;
use askama::Template;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// An HTML page body.
pub struct Page(String);

impl Page {
    /// Wraps rendered HTML.
    pub fn html(s: String) -> Page {
        Page(s)
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], self.0).into_response()
    }
}

/// What every page shares: its title, the active tab, its own URL (for live refresh).
pub struct Ctx {
    title: String,
    nav: &'static str,
    here: String,
    /// The node's state fingerprint when the page was built: the live stream reports any
    /// change after it, even one before the stream connected.
    live: String,
}

const NAV: [(&str, &str, &str); 9] = [
    ("overview", "/", "Overview"),
    ("nodes", "/nodes", "Nodes"),
    ("vulns", "/vulns", "Vulnerabilities"),
    ("patches", "/patches", "Patches"),
    ("rollouts", "/rollouts", "Rollouts"),
    ("sites", "/sites", "Sites"),
    ("audit", "/audit", "Audit"),
    ("reports", "/reports", "Reports"),
    ("admin", "/admin", "Admins & integrations"),
];

impl Ctx {
    fn new(title: impl Into<String>, nav: &'static str, here: impl Into<String>) -> Ctx {
        Ctx { title: title.into(), nav, here: here.into(), live: String::new() }
    }
    fn live(mut self, live: &str) -> Ctx {
        self.live = live.to_string();
        self
    }
    fn tabs(&self) -> Vec<(&'static str, &'static str, bool)> {
        NAV.iter().map(|(k, href, label)| (*href, *label, *k == self.nav)).collect()
    }
}

/// "3 min ago" from two clocks.
pub fn ago(now_ms: &u64, then_ms: &u64) -> String {
    let (now_ms, then_ms) = (*now_ms, *then_ms);
    if then_ms == 0 {
        return "never".into();
    }
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// Bytes in binary units (`crate::units::bytes_text`), for the templates.
pub fn bytes(n: &u64) -> String {
    crate::units::bytes_text(*n)
}

/// The first 12 characters of an id.
pub fn short(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// A UTC time.
pub fn when(ms: &u64) -> String {
    let ms = *ms;
    if ms == 0 {
        "—".into()
    } else {
        crate::report::datetime(ms)
    }
}

fn render(t: impl Template) -> String {
    t.render().unwrap_or_else(|e| format!("<!doctype html><p>rendering failed: {e}</p>"))
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessageT {
    c: Ctx,
    heading: String,
    text: String,
    command: Option<String>,
    bare: bool,
}

/// The page shown without a session.
pub fn login_needed() -> String {
    render(MessageT {
        c: Ctx::new("Log in", "", "/"),
        heading: "Log in to this node's dashboard".into(),
        text: "There is no password: on the machine running the node, this command prints a \
               one-time link that logs this browser in (it works once, within a minute)."
            .into(),
        command: Some("patchmesh dashboard --config /etc/patchmesh/node.toml".into()),
        bare: true,
    })
}

/// The page for a used, expired or unknown login link.
pub fn login_refused() -> String {
    render(MessageT {
        c: Ctx::new("Link expired", "", "/"),
        heading: "This login link has been used or has expired".into(),
        text: "Each link works once, within a minute of being printed. Print a new one:".into(),
        command: Some("patchmesh dashboard --config /etc/patchmesh/node.toml".into()),
        bare: true,
    })
}

/// A failure to build a page.
pub fn error_page(e: &str) -> String {
    render(MessageT {
        c: Ctx::new("Error", "", "/"),
        heading: "This page could not be built".into(),
        text: e.to_string(),
        command: None,
        bare: false,
    })
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewT<'a> {
    c: Ctx,
    m: &'a Overview,
}

impl OverviewT<'_> {
    /// Donut arcs: (class, label, count, dasharray, dashoffset).
    fn arcs(&self) -> Vec<(&'static str, &'static str, u32, String, String)> {
        self.m
            .compliance
            .slices()
            .into_iter()
            .map(|(label, class, n, start, pct)| {
                (
                    class,
                    label,
                    n,
                    format!("{pct:.2} {:.2}", 100.0 - pct),
                    format!("{:.2}", 25.0 - start),
                )
            })
            .collect()
    }
}

/// `/`.
pub fn overview(m: &Overview, live: &str) -> String {
    render(OverviewT { c: Ctx::new("Overview", "overview", "/").live(live), m })
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesT<'a> {
    c: Ctx,
    m: &'a NodesPage,
    now_ms: u64,
}

impl NodesT<'_> {
    fn query(&self, sort: &str, page: usize) -> String {
        let f = &self.m.filter;
        let dir = if sort == f.sort && f.dir != "desc" { "desc" } else { "" };
        let dir = if page != self.m.page { f.dir.as_str() } else { dir };
        let pairs = [
            ("q", f.q.as_str()),
            ("site", f.site.as_str()),
            ("status", f.status.as_str()),
            ("cve", f.cve.as_str()),
            ("sort", sort),
            ("dir", dir),
        ];
        let mut s = serde_urlencoded::to_string(
            pairs.iter().filter(|(_, v)| !v.is_empty()).collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        if page > 1 {
            s.push_str(&format!("&page={page}"));
        }
        s
    }
    fn sort_link(&self, col: &str) -> String {
        format!("/nodes?{}", self.query(col, 1))
    }
    fn aria_sort(&self, col: &str) -> &'static str {
        if self.m.filter.sort == col || (col == "host" && self.m.filter.sort.is_empty()) {
            if self.m.filter.dir == "desc" {
                "descending"
            } else {
                "ascending"
            }
        } else {
            "none"
        }
    }
    fn page_link(&self, page: usize) -> String {
        format!("/nodes?{}", self.query(&self.m.filter.sort.clone(), page))
    }
    fn export(&self, kind: &str) -> String {
        let q = self.query(&self.m.filter.sort.clone(), self.m.page);
        match kind {
            "csv" => format!("/nodes.csv?{q}"),
            _ => format!("/api/v1/nodes?{q}"),
        }
    }
    fn seen(&self, r: &NodeRow) -> String {
        ago(&self.now_ms, &r.last_seen_ms)
    }
}

/// `/nodes`.
pub fn nodes(m: &NodesPage, live: &str) -> String {
    let t = NodesT {
        c: Ctx::new("Nodes", "nodes", "/nodes").live(live),
        m,
        now_ms: crate::clock::now_ms().0,
    };
    // The live refresh keeps the page's filter, sort and page.
    let here = t.page_link(m.page);
    render(NodesT { c: Ctx::new("Nodes", "nodes", here).live(live), ..t })
}

#[derive(Template)]
#[template(path = "node.html")]
struct NodeT<'a> {
    c: Ctx,
    m: &'a NodeDetail,
}

impl NodeT<'_> {
    fn audit_line(&self, e: &serde_json::Value) -> (String, String, String) {
        audit_line(e)
    }
}

/// The newest `max` entries of an audit export (JSON lines), newest first.
pub fn audit_entries(text: &str, max: usize) -> Vec<serde_json::Value> {
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|mut v| v.get_mut("entry").map(serde_json::Value::take))
        .filter(|v| v.get("seq").is_some() && v.get("event").is_some())
        .take(max)
        .collect()
}

/// (sequence, time, "event: field value · …") of one audit entry, ids shortened.
fn audit_line(e: &serde_json::Value) -> (String, String, String) {
    let seq = e["seq"].to_string();
    let at = e["at_ms"]
        .as_i64()
        .and_then(|t| jiff::Timestamp::from_millisecond(t).ok())
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    let ev = &e["event"];
    let kind = ev.get("type").and_then(|t| t.as_str()).unwrap_or("event").replace('_', " ");
    let value = |v: &serde_json::Value| -> String {
        match v {
            serde_json::Value::String(s)
                if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                short(s).to_string()
            }
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| match x {
                    serde_json::Value::String(s) => short(s).to_string(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        }
    };
    let mut detail = ev
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| *k != "type" && !v.is_null() && v.as_str() != Some(""))
                .map(|(k, v)| format!("{}: {}", k.replace('_', " "), value(v)))
                .collect::<Vec<_>>()
                .join(" · ")
        })
        .unwrap_or_default();
    if detail.len() > 300 {
        let mut cut = 300;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
        detail.push('…');
    }
    (seq, at, format!("{kind} — {detail}"))
}

/// `/nodes/{id}`.
pub fn node_detail(m: &NodeDetail, live: &str) -> String {
    let host = m.row.as_ref().map_or_else(|| short(&m.node).to_string(), |r| r.host.clone());
    render(NodeT {
        c: Ctx::new(format!("Node {host}"), "nodes", format!("/nodes/{}", m.node)).live(live),
        m,
    })
}

#[derive(Template)]
#[template(path = "vulns.html")]
struct VulnsT<'a> {
    c: Ctx,
    m: &'a VulnsPage,
}

/// `/vulns`.
pub fn vulns(m: &VulnsPage, live: &str) -> String {
    render(VulnsT { c: Ctx::new("Vulnerabilities", "vulns", "/vulns").live(live), m })
}

#[derive(Template)]
#[template(path = "patches.html")]
struct PatchesT<'a> {
    c: Ctx,
    m: &'a PatchesPage,
}

impl PatchesT<'_> {
    fn patches(&self) -> Vec<(String, String)> {
        self.m
            .catalog
            .entries
            .iter()
            .filter(|e| e.key.starts_with("patch/"))
            .map(|e| {
                let v = serde_json::to_value(&e.entry).unwrap_or_default();
                let name = ["name", "version", "executor"]
                    .iter()
                    .filter_map(|k| find_str(&v, k))
                    .collect::<Vec<_>>()
                    .join(" ");
                (e.key.trim_start_matches("patch/").to_string(), name)
            })
            .collect()
    }
}

fn find_str(v: &serde_json::Value, key: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(o) => o
            .get(key)
            .and_then(|x| x.as_str().map(String::from))
            .or_else(|| o.values().find_map(|x| find_str(x, key))),
        _ => None,
    }
}

/// `/patches`.
pub fn patches(m: &PatchesPage, live: &str) -> String {
    render(PatchesT { c: Ctx::new("Patches and content", "patches", "/patches").live(live), m })
}

#[derive(Template)]
#[template(path = "rollouts.html")]
struct RolloutsT<'a> {
    c: Ctx,
    m: &'a Vec<RolloutRow>,
}

/// `/rollouts`.
pub fn rollouts(m: &Vec<RolloutRow>, live: &str) -> String {
    render(RolloutsT { c: Ctx::new("Rollouts", "rollouts", "/rollouts").live(live), m })
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct RolloutT<'a> {
    c: Ctx,
    m: &'a RolloutDetail,
}

impl RolloutT<'_> {
    fn gate(&self, g: &patchmesh_protocol::catalog::Gate) -> String {
        let mut parts = vec![format!(
            "opens the next ring at {}% succeeded (at least {})",
            f64::from(g.min_success_permille) / 10.0,
            g.min_reports
        )];
        parts.push(format!("halts above {} failure(s)", g.max_failures));
        if g.max_failure_permille > 0 {
            parts.push(format!("or {}% failed", f64::from(g.max_failure_permille) / 10.0));
        }
        parts.push(format!("soak {} s", g.min_soak_ms / 1000));
        parts.join(", ")
    }
    fn command(&self, c: &crate::control::CommandView) -> String {
        let action = match &c.action {
            patchmesh_protocol::catalog::CommandAction::Pause => "pause".to_string(),
            patchmesh_protocol::catalog::CommandAction::Abort => "abort".to_string(),
            patchmesh_protocol::catalog::CommandAction::Approve { .. } => "approve".to_string(),
            patchmesh_protocol::catalog::CommandAction::Resume { overrides: None } => {
                "resume".into()
            }
            patchmesh_protocol::catalog::CommandAction::Resume { overrides: Some(o) } => {
                format!("resume, lifting {o:?}")
            }
        };
        format!("{} by admin {} at {}", action, short(&c.admin), when(&c.issued_at_ms))
    }
    fn halted(&self) -> bool {
        self.m.rollout.state() == "halted"
    }
}

/// `/rollouts/{id}`.
pub fn rollout_detail(m: &RolloutDetail, live: &str) -> String {
    render(RolloutT {
        c: Ctx::new(
            format!("Rollout {}", m.row.patch),
            "rollouts",
            format!("/rollouts/{}", m.rollout.id),
        )
        .live(live),
        m,
    })
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditT<'a> {
    c: Ctx,
    m: &'a AuditPage,
}

impl AuditT<'_> {
    fn rows(&self) -> Vec<(String, String, String)> {
        self.m.entries.iter().map(audit_line).collect()
    }
}

/// `/audit`.
pub fn audit(m: &AuditPage, live: &str) -> String {
    render(AuditT {
        c: Ctx::new("Audit", "audit", format!("/audit?node={}", m.node)).live(live),
        m,
    })
}

#[derive(Template)]
#[template(path = "reports.html")]
struct ReportsT<'a> {
    c: Ctx,
    b: &'a crate::control::ReportBasisView,
}

/// `/reports`.
pub fn reports(b: &crate::control::ReportBasisView) -> String {
    render(ReportsT { c: Ctx::new("Reports", "reports", "/reports"), b })
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminT<'a> {
    c: Ctx,
    m: &'a AdminPage,
}

impl AdminT<'_> {
    fn enrolled(&self, v: &crate::control::VoucherView) -> String {
        let (n, max) = (v.enrolments.len(), v.max_nodes as usize);
        if n > max {
            format!("{max} / {max} ({} refused)", n - max)
        } else {
            format!("{n} / {max}")
        }
    }

    fn voucher_state(&self, v: &crate::control::VoucherView) -> String {
        if v.expires_at_ms <= self.m.now_ms {
            "expired".into()
        } else {
            format!("open until {}", when(&v.expires_at_ms))
        }
    }

    fn dead(&self) -> Vec<(String, String, String)> {
        self.m
            .dlq
            .as_array()
            .map(|a| {
                a.iter()
                    .take(100)
                    .map(|i| {
                        (
                            i["id"].as_str().unwrap_or("").to_string(),
                            i["sink"].as_str().unwrap_or("").to_string(),
                            i["last_error"]
                                .as_str()
                                .or(i["error"].as_str())
                                .unwrap_or("")
                                .to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `/admin`.
pub fn admin(m: &AdminPage, live: &str) -> String {
    render(AdminT { c: Ctx::new("Admins and integrations", "admin", "/admin").live(live), m })
}

#[derive(Template)]
#[template(path = "sites.html")]
struct SitesT<'a> {
    c: Ctx,
    m: &'a SitesPage,
}

/// `/sites`.
pub fn sites(m: &SitesPage, live: &str) -> String {
    render(SitesT { c: Ctx::new("Sites", "sites", "/sites").live(live), m })
}

#[derive(Template)]
#[template(path = "proposal.html")]
struct ProposalT<'a> {
    c: Ctx,
    m: &'a ProposalView,
}

/// `/proposals/{id}`.
pub fn proposal(m: &ProposalView, live: &str) -> String {
    render(ProposalT {
        c: Ctx::new("Proposal", "rollouts", format!("/proposals/{}", m.proposal.id)).live(live),
        m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{RingView, RolloutView};
    use patchmesh_protocol::rollout::RingStats;

    fn detail(counts: RingStats) -> RolloutDetail {
        let rollout = RolloutView {
            id: "ab".repeat(32),
            hash: "cd".repeat(32),
            author: "ef".repeat(32),
            content_id: "01".repeat(32),
            patch: None,
            created_at_ms: 0,
            control: Some(patchmesh_protocol::rollout::Control::Running),
            approvals: None,
            approvals_needed: None,
            open_rings: Some(1),
            waiting: None,
            rings: vec![RingView {
                name: "canary".into(),
                percent: 10,
                labels: Default::default(),
                gate: Default::default(),
                counts,
            }],
            commands: vec![],
            local: None,
            standing: None,
            stopped_at_ms: None,
            max_targets: 0,
            rollback_on_halt: true,
        };
        RolloutDetail {
            row: super::super::model::rollout_row(&rollout),
            rollout,
            stopped: None,
            members: vec![],
            site: "hq".into(),
            alarms: 0,
        }
    }

    /// The cells of the rings table's first row, as text.
    fn ring_cells(page: &str) -> Vec<String> {
        let table = page.split("id=\"rings-table\"").nth(1).expect("a rings table");
        let row = table.split("<tbody>").nth(1).unwrap().split("</tr>").next().unwrap();
        row.split("<td class=\"num")
            .skip(1)
            .map(|c| c.split('>').nth(1).unwrap().split('<').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_ring_row_shows_members_whose_soak_is_over_apart_from_those_still_soaking() {
        let counts =
            RingStats { targeted: 10, soaking: 5, soaked: 3, succeeded: 4, ..Default::default() };
        let page = rollout_detail(&detail(counts), "");
        assert!(page.contains(">Soaking</th><th scope=\"col\""), "no soaking column");
        assert!(page.contains(">Soaked</th>"), "no soaked column");
        // Reach, targeted, pending, installing, soaking (still running), soaked, succeeded, …
        let cells = ring_cells(&page);
        assert_eq!(cells[..7], ["10%", "10", "0", "0", "2", "3", "4"], "{cells:?}");
    }
}
