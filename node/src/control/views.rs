//! The typed answers of the control API: what the daemon builds, what the CLI and the tests
//! read, and (as JSON) what `--json` prints. One struct per answer, shared by both ends, so a
//! renamed or missing field fails to compile or to parse instead of reading as a silent
//! default.

use crate::inventory::Inventory;
use patchmesh_protocol::catalog::Gate;
use patchmesh_protocol::rollout::{Control, RingStats};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `Request::Status`: this node, its mesh, trust, catalog, peers and traffic.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    /// Node id (hex).
    pub node: String,
    /// libp2p peer id.
    pub peer_id: String,
    /// Site from its certificate.
    pub site: String,
    /// Labels from its certificate.
    pub labels: BTreeMap<String, String>,
    /// Mesh name.
    pub mesh: String,
    /// Mesh id (hex).
    pub mesh_id: String,
    /// Admin set version.
    pub trust_version: u64,
    /// Catalog changes held.
    pub catalog_changes: usize,
    /// Catalog state hash.
    pub catalog_state: String,
    /// Hash of trust, catalog and site state.
    pub state_hash: String,
    /// Node records of its site held.
    pub site_records: usize,
    /// Site summaries held.
    pub site_summaries: usize,
    /// Connections.
    pub peers_connected: usize,
    /// Connections whose certificate verified.
    pub peers_admitted: usize,
    /// Gossipsub mesh peers per topic.
    pub gossip_mesh: GossipMeshView,
    /// Listen addresses.
    pub listen: Vec<String>,
    /// Transport bytes sent.
    pub bytes_sent: u64,
    /// Transport bytes received.
    pub bytes_received: u64,
    /// Protocol messages sent, by kind.
    pub messages_sent: BTreeMap<String, MessageCount>,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    /// Objects accepted from peers.
    pub accepted: u64,
    /// Objects refused, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Messages dropped from peers without a certificate.
    pub unadmitted_dropped: u64,
    /// Incoming connections refused in the transport handshake (bound to the mesh id: nodes of
    /// another mesh, strangers without the PSK).
    #[serde(default)]
    pub handshakes_refused: u64,
    /// Peers banned now for sending invalid objects (they are refused at connection).
    #[serde(default)]
    pub banned_peers: u64,
    /// Connections from banned peers refused.
    #[serde(default)]
    pub banned_refused: u64,
    /// Relayed connections upgraded to direct ones by hole punching.
    #[serde(default)]
    pub hole_punches_ok: u64,
    /// Hole punching attempts that failed (the connection stays relayed).
    #[serde(default)]
    pub hole_punches_failed: u64,
    /// DHT bootstraps this node started to find more peers (fewer connected than
    /// `peers_target`).
    #[serde(default)]
    pub dht_bootstraps: u64,
    /// Whether those bootstraps wait for a change: the last one brought no new peer.
    #[serde(default)]
    pub dht_discovery_parked: bool,
    /// Process id.
    pub pid: u32,
    /// Objects restored from the store at start.
    pub restored_objects: usize,
    /// Objects of the store that failed verification at start.
    pub restore_refused: usize,
    /// Complete payloads held.
    pub payloads_held: usize,
    /// Payload bytes held.
    pub payload_bytes_held: u64,
    /// Whether the node still hears the rest of the mesh.
    #[serde(default)]
    pub reach: ReachView,
}

/// Whether a node still hears the rest of the mesh, from other sites' signed beacons (see
/// `patchmesh_protocol::node::Reach`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachView {
    /// `alone`, `listening`, `in_touch`, `behind` or `cut_off`.
    pub state: String,
    /// What it means, in a sentence.
    pub text: String,
    /// No new install starts on this node while this is true (it may not be hearing a halt).
    pub holds_installs: bool,
    /// Other sites heard from recently, and other sites known (when judged).
    pub heard: Option<(u32, u32)>,
    /// The sites whose beacons claim more than this node holds (when behind).
    pub behind_sites: Vec<String>,
}

impl ReachView {
    /// The view of `reach`.
    pub fn of(reach: &patchmesh_protocol::node::Reach) -> ReachView {
        use patchmesh_protocol::node::Reach;
        ReachView {
            state: reach.name().to_string(),
            text: reach.to_string(),
            holds_installs: reach.holds_installs(),
            heard: match reach {
                Reach::InTouch { heard, sites } | Reach::CutOff { heard, sites, .. } => {
                    Some((*heard, *sites))
                }
                _ => None,
            },
            behind_sites: match reach {
                Reach::Behind { sites, .. } => sites.iter().map(|s| s.to_string()).collect(),
                _ => Vec::new(),
            },
        }
    }
}

/// Gossipsub mesh peers per topic.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct GossipMeshView {
    /// Control topic (admin sets, catalog, alarms).
    pub control: usize,
    /// This site's topic.
    pub site: usize,
    /// Summaries topic.
    pub summaries: usize,
}

/// Messages of one kind and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCount {
    /// Messages.
    pub messages: u64,
    /// Encoded bytes.
    pub bytes: u64,
}

/// One connection (`Request::Peers` answers a list of them).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerView {
    /// libp2p peer id.
    pub peer_id: String,
    /// Node id (hex), when the peer id carries an ed25519 key.
    pub node: Option<String>,
    /// Whether its certificate verified.
    pub admitted: bool,
    /// Its site, once admitted.
    pub site: Option<String>,
    /// Penalties this node gave it.
    pub penalties: u32,
    /// Its gossipsub score.
    pub score: Option<f64>,
    /// Open connections: the remote address, and whether it runs through a relay.
    #[serde(default)]
    pub connections: Vec<ConnectionView>,
}

/// One connection to a peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectionView {
    /// The remote address.
    pub remote: String,
    /// Relayed (through a relay node's circuit) rather than direct.
    pub relayed: bool,
}

/// `Request::Catalog`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CatalogView {
    /// Catalog state hash.
    pub catalog_state: String,
    /// Changes held.
    pub changes: usize,
    /// Entries by key.
    pub entries: Vec<CatalogItemView>,
}

/// One catalog entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CatalogItemView {
    /// Its key.
    pub key: String,
    /// What it says.
    pub entry: CatalogEntryView,
}

/// What a catalog entry says.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CatalogEntryView {
    /// A patch.
    Patch {
        /// Name.
        name: String,
        /// Version.
        version: String,
        /// Payload content id (hex).
        content_id: String,
        /// Signed payload size.
        size_bytes: u64,
        /// Executor kind.
        executor: String,
    },
    /// A rollout.
    Rollout {
        /// Rollout id (hex).
        id: String,
        /// Payload content id (hex).
        content_id: String,
        /// Its rings.
        rings: Vec<RingBrief>,
    },
    /// An admin command.
    Command {
        /// Rollout id (hex).
        rollout: String,
        /// pause, resume, abort or approve.
        action: String,
        /// Admin key id.
        admin: String,
    },
    /// An exception to a finding.
    Exception {
        /// The CVE.
        cve: String,
        /// `risk-accepted` or `not-affected`.
        exception: String,
        /// Why.
        justification: String,
        /// The compensating control, if any.
        compensating_control: Option<String>,
        /// Labels, sites, OS and package predicates the covered nodes match.
        target: String,
        /// When it was made.
        created_at_ms: u64,
        /// When it lapses.
        expires_at_ms: u64,
    },
    /// An intel bundle.
    Intel {
        /// Bundle content id (hex).
        content_id: String,
        /// Signed size.
        size_bytes: u64,
        /// When the admin built it (ms since the epoch).
        created_at_ms: u64,
        /// Its input files.
        sources: Vec<String>,
    },
    /// One machine's admission revoked.
    NodeRevocation {
        /// The machine (hex).
        node: String,
        /// Its site.
        site: String,
        /// Why.
        reason: String,
        /// When.
        revoked_at_ms: u64,
    },
    /// Deferrals a rollout allows the people at its machines.
    Deferrals {
        /// Rollout id (hex).
        rollout: String,
        /// How many.
        max: u8,
        /// How long each.
        each_ms: u64,
    },
    /// Labels no voucher may grant.
    ReservedLabels {
        /// Reserved values per label key (empty: every value).
        labels: std::collections::BTreeMap<String, Vec<String>>,
    },
    /// The integration policy.
    Integrations {
        /// The policy (no secrets: those live in each emitting node's credentials file).
        policy: patchmesh_protocol::integrations::IntegrationPolicy,
    },
    /// An enrolment voucher.
    Voucher(VoucherView),
}

/// An enrolment voucher as the catalog holds it, with the enrolments this node has seen.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VoucherView {
    /// Voucher id (hex).
    pub id: String,
    /// The admin who signed it.
    pub signer: String,
    /// Site the machines join.
    pub site: String,
    /// Labels their admission carries.
    pub labels: BTreeMap<String, String>,
    /// The most machines it admits.
    pub max_nodes: u32,
    /// Signed at.
    pub issued_at_ms: u64,
    /// No enrolment after this.
    pub expires_at_ms: u64,
    /// Each machine waits for an admin's approval.
    pub require_approval: bool,
    /// Revoked.
    pub revoked: bool,
    /// Nodes an admin approved.
    pub approved: Vec<String>,
    /// Enrolments this node has seen, in rank order: (node, enrolled at ms).
    pub enrolments: Vec<(String, u64)>,
    /// The signed voucher (postcard, hex).
    pub envelope: String,
}

/// A ring's name and cumulative percent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RingBrief {
    /// Name.
    pub name: String,
    /// Cumulative percent.
    pub percent: u8,
}

/// `Request::AdminState`: what signing the next admin set needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminStateView {
    /// The genesis envelope (postcard, hex).
    pub genesis: String,
    /// The latest admin set envelope (postcard, hex), if any.
    pub latest_admin_set: Option<String>,
    /// Admin set version.
    pub version: u64,
    /// Current admin key ids.
    pub admins: Vec<String>,
    /// Per admin: automerge actor (hex) → highest sequence number held.
    pub history: BTreeMap<String, BTreeMap<String, u64>>,
}

/// `Request::Prepare`: an unsigned catalog change body (postcard, hex).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreparedView {
    /// The body to sign.
    pub body: String,
}

/// `Request::Submit` and `Request::AdminSet`: applied, stored and flushed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmittedView {
    /// Envelope id (hex).
    pub id: String,
    /// Catalog state hash after it.
    pub catalog_state: String,
    /// Admin set version after it.
    pub trust_version: u64,
}

/// `Request::Import`: a payload now held.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContentBrief {
    /// Content id (hex).
    pub content_id: String,
    /// Size.
    pub size_bytes: u64,
}

/// `Request::Content` and `Request::Fetch`: where one payload stands.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ContentView {
    /// The content id (hex).
    pub content: String,
    /// Signed size.
    #[serde(default)]
    pub size_bytes: u64,
    /// Verified bytes held.
    #[serde(default)]
    pub have_bytes: u64,
    /// Recent rate.
    #[serde(default)]
    pub rate_bytes_per_s: u64,
    /// Sources serving a range now.
    #[serde(default)]
    pub sources_active: usize,
    /// Sources known.
    #[serde(default)]
    pub sources_known: usize,
    /// Sources resting after a broken stream, slowness or a fault (each rest ends).
    #[serde(default)]
    pub sources_resting: usize,
    /// Peers penalised for lies, corruption or protocol breaks (never for slowness).
    #[serde(default)]
    pub penalised: u32,
    /// Verified groups received more than once (bytes that crossed a link for nothing).
    #[serde(default)]
    pub duplicate_groups: u64,
    /// How long no source has held anything (0 while one does).
    #[serde(default)]
    pub waiting_ms: u64,
    /// "wan" if this node fetches for its site across the WAN, else "lan" (empty when no
    /// download ran).
    #[serde(default)]
    pub role: String,
    /// fetching, complete, failed, partial (held, no download running) or absent.
    pub state: String,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Bytes received from this site.
    #[serde(default)]
    pub lan_bytes: u64,
    /// Bytes received from other sites.
    #[serde(default)]
    pub wan_bytes: u64,
    /// Sources dropped, by fault.
    #[serde(default)]
    pub dropped: BTreeMap<String, u32>,
    /// Verified bytes already held when this download started (a resume).
    #[serde(default)]
    pub resumed_bytes: u64,
    /// Milliseconds since it started.
    #[serde(default)]
    pub elapsed_ms: u64,
}

/// `Request::ContentList`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContentListView {
    /// Bytes of every payload held.
    pub held_bytes: u64,
    /// Each payload.
    pub contents: Vec<ContentItemView>,
}

/// One payload held.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContentItemView {
    /// Content id (hex).
    pub content_id: String,
    /// Size.
    pub size_bytes: u64,
    /// Verified bytes held.
    pub have_bytes: u64,
    /// Whether every byte is held and verified.
    pub complete: bool,
    /// "name version" of the catalog patch naming it.
    pub patch: Option<String>,
    /// Its download state, or complete/partial.
    pub state: String,
    /// Why its download failed.
    pub error: Option<String>,
}

/// `Request::ContentGc`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcView {
    /// What went (or would go, with `dry_run`).
    pub removed: Vec<ContentBrief>,
    /// Only said what would go.
    pub dry_run: bool,
}

/// `Request::DlqReplay`: dead-lettered events queued for delivery again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplayView {
    /// How many.
    pub replayed: usize,
}

/// `Request::Intel`: this node against the intel bundle in use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IntelView {
    /// The bundle in use (content id), if any.
    pub bundle: Option<String>,
    /// When it was built.
    pub bundle_created_at_ms: u64,
    /// This node's release codename.
    pub release: String,
    /// When the findings were last computed.
    pub assessed_at_ms: u64,
    /// Findings, ranked.
    pub findings: Vec<patchmesh_protocol::intel::report::Assessed>,
    /// Available updates.
    pub updates: Vec<patchmesh_protocol::intel::apt::Update>,
    /// The exposure summary this node's signed record carries.
    pub summary: Option<patchmesh_protocol::intel::report::ExposureSummary>,
    /// Its host name.
    #[serde(default)]
    pub hostname: String,
    /// When each finding opened and closed (the node's own account, each change also in its
    /// audit log).
    #[serde(default)]
    pub history: Vec<patchmesh_protocol::intel::history::HistoryEntry>,
    /// A newer bundle being fetched or read.
    pub loading: Option<String>,
}

/// `Request::IntegrationsStatus`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IntegrationsView {
    /// The policy in force, if any.
    pub policy: Option<patchmesh_protocol::integrations::IntegrationPolicy>,
    /// Per sink: live members allowed to emit here, sites that may send fleet-wide events,
    /// and why it is disabled (410), if it is.
    pub sinks: Vec<SinkStatus>,
    /// Events waiting (this node elected, or on standby for fail-over).
    pub pending: Vec<crate::integrations::Item>,
    /// Delivered (markers kept a week).
    pub delivered: usize,
    /// Dead-lettered.
    pub dead: usize,
}

/// One sink in [`IntegrationsView`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinkStatus {
    /// Name.
    pub name: String,
    /// Live members of this site allowed to emit (hex).
    pub emitters: Vec<String>,
    /// Whether this node is one of them.
    pub this_node_emits: bool,
    /// Sites that may send fleet-wide events.
    pub sites: Vec<String>,
    /// Disabled, and why.
    pub disabled: Option<String>,
}

/// `Request::ReportBasis`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportBasisView {
    /// The mesh name.
    pub mesh_name: String,
    /// The mesh id (hex).
    pub mesh: String,
    /// The answering node (hex).
    pub node: String,
    /// Its site.
    pub site: String,
    /// Its clock.
    pub now_ms: u64,
    /// The catalog state hash.
    pub catalog_state: String,
    /// BLAKE3 over this site's records (the records root of its summary).
    pub records_root: String,
    /// The newest intel bundle in the catalog.
    pub bundle: Option<String>,
    /// When the admin made it.
    pub bundle_created_at_ms: u64,
    /// This site's members, from their signed records.
    pub assets: Vec<AssetBasis>,
    /// Other sites, from their signed summaries.
    pub sites: Vec<SiteBasis>,
    /// Exceptions in the catalog (in force or not).
    pub exceptions: Vec<ExceptionBasis>,
}

/// One member of this site, from its signed record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AssetBasis {
    /// The node (hex).
    pub node: String,
    /// Its site.
    pub site: String,
    /// Labels from its admission certificate.
    pub labels: BTreeMap<String, String>,
    /// OS.
    pub os: String,
    /// Kernel.
    pub kernel: String,
    /// Installed packages.
    pub package_count: u32,
    /// When it signed its latest record.
    pub record_written_at_ms: u64,
    /// Its exposure summary.
    pub exposure: Option<patchmesh_protocol::intel::report::ExposureSummary>,
    /// Its audit checkpoint: (seq, head hex, signed at ms).
    pub audit: Option<(u64, String, u64)>,
    /// Its standing per rollout: (rollout hex, ring, status).
    pub standings: Vec<(String, u8, String)>,
}

/// Another site, from its signed summary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteBasis {
    /// The site.
    pub site: String,
    /// Members.
    pub members: u32,
    /// The member that signed the summary (hex).
    pub author: String,
    /// Its exposure.
    pub exposure: patchmesh_protocol::intel::report::SiteExposure,
}

/// An exception in the catalog.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExceptionBasis {
    /// Catalog key.
    pub key: String,
    /// The entry.
    pub entry: patchmesh_protocol::intel::exception::ExceptionEntry,
    /// The nodes it covers, in words.
    pub scope: String,
    /// The approving admin key (hex).
    pub approver: String,
}

/// `Request::SignReport`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportSignature {
    /// The node's key (hex).
    pub key: String,
    /// ed25519 over the report domain and the body hash (hex).
    pub signature: String,
}

/// `Request::AuditExport`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditExportView {
    /// The node.
    pub node: String,
    /// The export, verified by the node that answers.
    pub verified: patchmesh_protocol::audit::Verified,
    /// The checkpoint in the node's signed record held here (seq, head hex), when it covers
    /// less than or as much as the export: the export was checked to contain it.
    pub record_checkpoint: Option<(u64, String)>,
    /// The export (JSON lines).
    pub text: String,
}

/// `Request::Findings`: another node's findings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteFindingsView {
    /// The node.
    pub node: String,
    /// Its signed exposure summary (the digest the findings were checked against).
    pub summary: Option<patchmesh_protocol::intel::report::ExposureSummary>,
    /// Its findings as it served them; their verdicts match the signed digest.
    pub findings: Vec<patchmesh_protocol::intel::report::Assessed>,
    /// Its release codename, as it served it.
    pub release: String,
    /// Its available updates, as it served them (not covered by the digest).
    pub updates: Vec<patchmesh_protocol::intel::apt::Update>,
    /// Its host name.
    #[serde(default)]
    pub hostname: String,
    /// When each finding opened and closed (the node's own account, each change also in its
    /// audit log).
    #[serde(default)]
    pub history: Vec<patchmesh_protocol::intel::history::HistoryEntry>,
}

/// What a node serves a site member asking for its findings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServedFindings {
    /// Release codename.
    pub release: String,
    /// Findings, ranked (their `finding` parts are what the signed digest covers).
    pub findings: Vec<patchmesh_protocol::intel::report::Assessed>,
    /// Available updates.
    pub updates: Vec<patchmesh_protocol::intel::apt::Update>,
    /// Its host name.
    #[serde(default)]
    pub hostname: String,
    /// When each finding opened and closed (the node's own account, each change also in its
    /// audit log).
    #[serde(default)]
    pub history: Vec<patchmesh_protocol::intel::history::HistoryEntry>,
}

/// One site in `Request::Exposure`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteExposureView {
    /// The site.
    pub site: String,
    /// Members (records behind the summary).
    pub members: u32,
    /// Its exposure.
    pub exposure: patchmesh_protocol::intel::report::SiteExposure,
}

/// `Request::Exposure`: the fleet's exposure as this node sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExposureView {
    /// The catalog's newest intel bundle, if any.
    pub bundle: Option<String>,
    /// When it was built.
    pub bundle_created_at_ms: u64,
    /// Per site (this node's own site computed from its members' records).
    pub sites: Vec<SiteExposureView>,
}

/// `Request::Inventory`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InventoryView {
    /// Node id (hex).
    pub node: String,
    /// Whether it matched the digest in the node's signed record.
    pub verified_against_signed_record: bool,
    /// The inventory.
    pub inventory: Inventory,
}

/// `Request::Rollouts`: every rollout as this node sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutsView {
    /// Node id (hex).
    pub node: String,
    /// Its site.
    pub site: String,
    /// Its clock.
    pub now_ms: u64,
    /// The rollouts.
    pub rollouts: Vec<RolloutView>,
    /// Catalog entries ignored, with why.
    pub ignored: Vec<(String, String)>,
    /// Failure reports held.
    pub alarms: usize,
}

/// One rollout as this node sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutView {
    /// Rollout id (hex).
    pub id: String,
    /// Hash of the entry (what approvals name).
    pub hash: String,
    /// Admin who signed it.
    pub author: String,
    /// Payload content id (hex).
    pub content_id: String,
    /// The patch it rolls out, if the catalog holds it.
    pub patch: Option<PatchBrief>,
    /// When it was created.
    pub created_at_ms: u64,
    /// What stops it (none before its first evaluation).
    pub control: Option<Control>,
    /// Approvals counted.
    pub approvals: Option<u32>,
    /// Approvals needed.
    pub approvals_needed: Option<u32>,
    /// Rings open for installs.
    pub open_rings: Option<u8>,
    /// Why the next ring is not open yet.
    pub waiting: Option<String>,
    /// Per ring: spec and counts.
    pub rings: Vec<RingView>,
    /// Admin commands naming it.
    pub commands: Vec<CommandView>,
    /// This node's install, if it took part.
    pub local: Option<LocalView>,
    /// This node's standing.
    pub standing: Option<StandingView>,
    /// When this node first saw it halted or aborted.
    pub stopped_at_ms: Option<u64>,
    /// Most nodes it may start on.
    pub max_targets: u32,
    /// Whether a halt rolls installs back.
    pub rollback_on_halt: bool,
}

impl RolloutView {
    /// The control state's name (`running`, `halted`, …), or `unknown`.
    pub fn state(&self) -> &'static str {
        match &self.control {
            None => "unknown",
            Some(Control::Running) => "running",
            Some(Control::AwaitingApproval) => "awaiting_approval",
            Some(Control::Paused) => "paused",
            Some(Control::Aborted) => "aborted",
            Some(Control::Halted { .. }) => "halted",
        }
    }

    /// This node's install step, if it has one.
    pub fn step(&self) -> Option<&str> {
        self.local.as_ref().map(|l| l.step.as_str())
    }
}

/// The patch a rollout rolls out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PatchBrief {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Executor kind.
    pub executor: String,
    /// Payload size.
    pub size_bytes: u64,
}

/// One ring: its spec and what this node counts in it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RingView {
    /// Name.
    pub name: String,
    /// Cumulative percent.
    pub percent: u8,
    /// Labels that put a node in it.
    pub labels: BTreeMap<String, String>,
    /// Its gate.
    pub gate: Gate,
    /// Its members by status (as the verdict counts them).
    #[serde(flatten)]
    pub counts: RingStats,
}

/// An admin command naming a rollout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommandView {
    /// Catalog key.
    pub key: String,
    /// The action.
    pub action: patchmesh_protocol::catalog::CommandAction,
    /// Admin key id.
    pub admin: String,
    /// When it was issued.
    pub issued_at_ms: u64,
}

/// This node's install of a rollout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalView {
    /// Its ring.
    pub ring: u8,
    /// Its step (fetching, staging, installing, verifying, soaking, committed, …).
    pub step: String,
    /// Whether a step failed.
    pub failed: bool,
    /// When it failed.
    pub failed_at_ms: Option<u64>,
    /// When it started.
    pub started_at_ms: u64,
    /// When it entered its step.
    pub step_at_ms: u64,
    /// Verifications during the soak.
    pub checks: u32,
    /// Last step's detail.
    pub detail: String,
}

/// This node's standing in a rollout, as its record says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StandingView {
    /// Its ring (none: not targeted).
    pub ring: Option<u8>,
    /// Pending, Installing, Succeeded, Failed, RolledBack or NotTargeted.
    pub status: String,
}

/// `Request::Fleet`: the fleet as this node knows it, what a rollout rehearsal replays. Its own
/// site comes from the members' signed records (exact); other sites from their signed
/// summaries (each site's member kinds, the most common first).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetView {
    /// This node's site.
    pub site: String,
    /// This node's time zone.
    pub zone: String,
    /// Every site known, this node's first.
    pub sites: Vec<FleetSiteView>,
    /// Fetch-to-verified durations of this node's earlier installs (milliseconds), newest last.
    pub install_ms: Vec<u64>,
    /// Per other site, the median ping round trip to its connected members (milliseconds).
    pub rtt_ms: BTreeMap<String, u64>,
    /// The node's configured WAN download cap (bytes/s; 0: none).
    pub wan_rate_bytes_per_s: u64,
    /// What this run's downloads moved across the WAN: the observed WAN bandwidth.
    #[serde(default)]
    pub wan_observed: Option<WanObserved>,
    /// Its protocol periods (the rehearsal runs with the same).
    pub anti_entropy_interval_ms: u64,
    /// Summary period.
    pub summary_interval_ms: u64,
    /// Relay batching period.
    pub gossip_flush_ms: u64,
    /// Rollout re-evaluation period.
    pub rollout_eval_ms: u64,
    /// How long the node has run (a node that started lately may not know every site yet).
    pub uptime_ms: u64,
    /// Distinct admins a large rollout needs.
    pub approval_threshold: u8,
    /// Rollouts that may reach more nodes than this are large.
    pub approval_above_nodes: u32,
}

/// WAN bandwidth as this node's downloads measured it: downloads that took at least
/// [`WanObserved::SAMPLE_MIN_BYTES`] across the WAN, their WAN bytes and durations summed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WanObserved {
    /// Downloads counted.
    pub downloads: u32,
    /// WAN bytes they moved.
    pub bytes: u64,
    /// Their durations, summed (ms).
    pub ms: u64,
}

impl WanObserved {
    /// Smaller downloads are mostly round trips and say little about bandwidth.
    pub const SAMPLE_MIN_BYTES: u64 = 256 * 1024;

    /// Bytes per second.
    pub fn rate_bytes_per_s(&self) -> u64 {
        self.bytes.saturating_mul(1000) / self.ms.max(1)
    }
}

/// One site in a [`FleetView`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetSiteView {
    /// The site.
    pub site: String,
    /// Its members.
    pub members: u64,
    /// True when read from the members' own records (this node's site); false from the
    /// site's summary.
    pub from_records: bool,
    /// Members per kind.
    pub kinds: Vec<MemberKindView>,
    /// Members of kinds the summary leaves out (their zone and labels are unknown).
    pub other: u64,
    /// The least free disk space a member reports where it keeps payloads (rounded down).
    #[serde(default)]
    pub min_free_disk_bytes: Option<u64>,
}

/// Members of one kind.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemberKindView {
    /// How many.
    pub count: u64,
    /// Time zone (empty: unknown).
    pub zone: String,
    /// Operating system.
    pub os: String,
    /// Certificate labels.
    pub labels: BTreeMap<String, String>,
    /// Quiet hours (`--window auto`), as text, and as the mask a rehearsal replays (hex).
    #[serde(default)]
    pub quiet: Option<String>,
    /// The quiet hours' mask, hex.
    #[serde(default)]
    pub quiet_mask: Option<String>,
}
