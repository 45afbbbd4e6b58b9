//! The `[intel]` model: an admin publishes an intel bundle at `at_ms`; each node that holds
//! the catalog entry fetches the bundle (a delay of `fetch_ms` × (1 + `fetch_jitter` ×
//! U[0,1)), as the rollout model's fetch; the payload itself is the [payload] model's
//! business), streams it into its index, assesses itself and signs its exposure
//! (`Command::SetExposure`) — the bundle, index, matching and summary all run the protocol's
//! own code on a real bundle. Every `check_ms` the world asks each live honest node whether its
//! view of the fleet counts every node on the bundle: every record of its own site carries an
//! exposure summary of this bundle, and it holds a summary of every other site whose members
//! are all on it. `exposure_visible_ms` is publication → that moment, per node.

use crate::stats::Percentiles;
use patchmesh_protocol::catalog::{CatalogEntry, IntelEntry};
use patchmesh_protocol::ids::{ContentId, Millis, SiteId};
use patchmesh_protocol::intel::bundle::{BundleWriter, Frame, Header, FORMAT};
use patchmesh_protocol::intel::matching::NodeIndex;
use patchmesh_protocol::intel::report::{assess_node, exposure_summary, ExposureSummary};
use patchmesh_protocol::intel::risk::Asset;
use patchmesh_protocol::intel::{
    Advisory, CveInfo, Installed, Kev, Origin, Statement, TrackerStatus, Urgency,
};
use patchmesh_protocol::node::Node;
use serde::{Deserialize, Serialize};

fn d_at() -> u64 {
    60_000
}
fn d_fetch() -> u64 {
    2_000
}
fn d_jitter() -> f64 {
    0.5
}
fn d_check() -> u64 {
    1_000
}

/// `[intel]` in a scenario.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntelSpec {
    /// When the admin publishes the bundle.
    #[serde(default = "d_at")]
    pub at_ms: u64,
    /// Bundle fetch time once a node holds the catalog entry.
    #[serde(default = "d_fetch")]
    pub fetch_ms: u64,
    /// Relative jitter of the fetch time.
    #[serde(default = "d_jitter")]
    pub fetch_jitter: f64,
    /// How often the world checks the nodes' views.
    #[serde(default = "d_check")]
    pub check_ms: u64,
}

/// What the model reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IntelFigures {
    /// Publication → a node's view counts every node on the bundle, over live honest nodes.
    pub exposure_visible_ms: Percentiles,
    /// Nodes whose view became complete.
    pub visible_nodes: usize,
    /// Live honest nodes at the end.
    pub live_nodes: usize,
}

/// Events of the model.
#[derive(Debug, Clone, Copy)]
pub enum IntelEv {
    /// The admin publishes.
    Publish,
    /// The world checks every node.
    Check,
    /// A node has the bundle read and assessed.
    Loaded {
        /// The node.
        node: u32,
    },
}

/// The model's state.
pub struct IntelModel {
    pub(crate) spec: IntelSpec,
    pub(crate) key: String,
    pub(crate) entry: CatalogEntry,
    content: ContentId,
    pub(crate) summary: ExposureSummary,
    pub(crate) published_us: Option<u64>,
    pub(crate) scheduled: Vec<bool>,
    pub(crate) visible_us: Vec<Option<u64>>,
}

impl IntelModel {
    /// Builds the bundle every node reads (one advisory on `sim-app`, installed everywhere at a
    /// version before its fix) and the exposure every node computes from it.
    pub fn new(spec: IntelSpec, nodes: usize, epoch_ms: u64) -> IntelModel {
        let created_at = Millis(epoch_ms + spec.at_ms);
        let mut w = BundleWriter::new(Vec::new()).expect("in-memory write");
        let frames = [
            Frame::Header(Header { format: FORMAT, created_at, sources: vec![] }),
            Frame::Source {
                release: "bookworm".into(),
                source: "sim-app".into(),
                advisories: vec![Advisory {
                    cve: "CVE-2099-0001".into(),
                    origin: Origin::Tracker,
                    statement: Statement::Tracker {
                        status: TrackerStatus::Resolved,
                        fixed_version: Some("2.0-1".into()),
                        urgency: Urgency::High,
                        nodsa: None,
                        fixed_in_security: true,
                    },
                    fix_seen_at: Some(created_at),
                }],
            },
            Frame::Cve(CveInfo {
                cve: "CVE-2099-0001".into(),
                description: "simulated".into(),
                cvss3: Some("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H".into()),
                cvss4: None,
                kev: Some(Kev {
                    date_added: "2099-01-01".into(),
                    due_date: "2099-01-22".into(),
                    ransomware: false,
                }),
                epss: Some((0.5, 0.99)),
            }),
        ];
        for f in &frames {
            w.write(f).expect("in-memory write");
        }
        let bytes = w.finish().expect("in-memory write");
        let content = ContentId(*blake3::hash(&bytes).as_bytes());
        let installed = [Installed::from_dpkg("sim-app", "amd64", "1.0-1", None)];
        let index = NodeIndex::load(&bytes[..], "bookworm", &installed)
            .expect("the model's own bundle reads");
        let findings = assess_node(&index, &installed, &Asset::default());
        let summary = exposure_summary(content, created_at, &findings);
        let entry = CatalogEntry::Intel(IntelEntry {
            content_id: content,
            size_bytes: bytes.len() as u64,
            created_at,
            sources: vec![],
        });
        IntelModel {
            spec,
            key: entry.key(),
            entry,
            content,
            summary,
            published_us: None,
            scheduled: vec![false; nodes],
            visible_us: vec![None; nodes],
        }
    }

    /// When the admin publishes.
    pub(crate) fn at_us(&self) -> u64 {
        self.spec.at_ms * 1000
    }

    /// Whether a node holds the catalog entry.
    pub(crate) fn holds_entry(&self, node: &Node) -> bool {
        node.catalog().entries().contains_key(&self.key)
    }

    /// Whether a node's view counts every node on the bundle.
    pub(crate) fn view_complete(&self, node: &Node, own: &SiteId, sites: usize) -> bool {
        let records = node.site().records();
        let own_done = records
            .values()
            .all(|r| r.record().exposure.as_ref().is_some_and(|e| e.bundle == self.content));
        if !own_done {
            return false;
        }
        let others: Vec<_> = node.summaries().all().iter().filter(|(s, _)| *s != own).collect();
        others.len() + 1 >= sites
            && others.iter().all(|(_, held)| {
                let s = held.summary();
                s.exposure.bundles.get(&self.content).is_some_and(|(_, n)| *n == s.record_count)
            })
    }

    /// Figures over the live honest nodes; a live node whose view never completed is a
    /// violation.
    pub(crate) fn finish(&self, live: &[bool], violations: &mut Vec<String>) -> IntelFigures {
        let Some(at) = self.published_us else {
            violations.push("the intel bundle was never published".into());
            return IntelFigures::default();
        };
        let live_nodes = live.iter().filter(|l| **l).count();
        let times: Vec<u64> = self
            .visible_us
            .iter()
            .zip(live)
            .filter(|(_, l)| **l)
            .filter_map(|(t, _)| t.map(|t| (t - at) / 1000))
            .collect();
        if times.len() < live_nodes {
            violations.push(format!(
                "{} live nodes never saw every node's exposure",
                live_nodes - times.len()
            ));
        }
        IntelFigures {
            visible_nodes: times.len(),
            exposure_visible_ms: Percentiles::of(times),
            live_nodes,
        }
    }
}
