//! What the CLI prints with `--json`, read back by scripts, the tests and the demo: one
//! struct per command's output, shared by both ends like the answers in `views`.

use super::{RolloutView, SiteExposureView, SubmittedView};
use patchmesh_protocol::catalog::CatalogEntry;
use patchmesh_protocol::ids::Millis;
use patchmesh_protocol::intel::report::Assessed;
use patchmesh_protocol::intel::risk::Due;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// `patchmesh init --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitOutput {
    /// Mesh name.
    pub mesh: String,
    /// Mesh id (hex).
    pub mesh_id: String,
    /// Where the admin key and genesis were written.
    pub dir: std::path::PathBuf,
    /// The root key file (to be taken offline).
    pub root_key_file: std::path::PathBuf,
    /// The admin key file.
    pub admin_key_file: std::path::PathBuf,
    /// True if both keys are passphrase-encrypted.
    pub encrypted: bool,
    /// The first admin key id.
    pub admin: String,
    /// The root key id.
    pub root: String,
}

/// `patchmesh node keygen --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeygenOutput {
    /// Where the key was written.
    pub key_file: std::path::PathBuf,
    /// Its public key (hex): what an admin admits.
    pub public_key: String,
}

/// `patchmesh admit --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdmitOutput {
    /// The node key admitted (hex).
    pub node: String,
    /// Its site.
    pub site: String,
    /// Where the certificate was written.
    pub out: std::path::PathBuf,
    /// How long it is valid.
    pub valid_days: u64,
}

/// `patchmesh patch add --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PatchAddOutput {
    /// Catalog key.
    pub key: String,
    /// Payload content id (hex).
    pub content_id: String,
    /// Payload size.
    pub size_bytes: u64,
    /// The catalog change that published it.
    pub change: SubmittedView,
}

/// `patchmesh rollout create --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutCreateOutput {
    /// Rollout id (hex).
    pub rollout: String,
    /// The catalog change that published it.
    pub published: SubmittedView,
}

/// `patchmesh rollout status --json`: the rollouts a node sees (all, or those matching an id).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutStatusOutput {
    /// Node id (hex).
    pub node: String,
    /// Its site.
    pub site: String,
    /// The rollouts.
    pub rollouts: Vec<RolloutView>,
}

/// `patchmesh demo --json`: what happened, every figure read back from the nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoReport {
    /// Nodes started.
    pub nodes: usize,
    /// Sites.
    pub sites: usize,
    /// Canary nodes (one per site).
    pub canaries: usize,
    /// Size of each payload.
    pub payload_bytes: u64,
    /// The good patch's rollout.
    pub good: DemoRollout,
    /// The bad patch's rollout.
    pub bad: DemoRollout,
    /// The good rollout's rings (as in `good`).
    pub rings: Vec<DemoRing>,
    /// Nodes outside the canary ring that installed the bad patch.
    pub blast_radius: usize,
    /// First failed canary report → every node halted.
    pub halt_latency_ms: u64,
    /// Bad rollout created → its halt (the first failed canary: the gate allows none).
    #[serde(default)]
    pub halt_after_ms: u64,
    /// The rehearsal's prediction of `halt_after_ms` (p50, p90), and of the blast radius.
    #[serde(default)]
    pub halt_predicted_ms: Option<[u64; 2]>,
    /// The rehearsal's blast radius (max over seeds).
    #[serde(default)]
    pub blast_radius_predicted: Option<u64>,
    /// Nodes whose target file is the good version at the end.
    pub nodes_on_good_version: usize,
    /// Largest WAN bytes per site ÷ payload, over sites and patches.
    pub wan_ratio_max: f64,
    /// WAN bytes per site and patch.
    pub wan: Vec<DemoWan>,
    /// Wall time.
    pub elapsed_ms: u64,
    /// The finding the good patch remediates.
    pub intel: DemoIntel,
    /// The compliance report (JSON, HTML, PDF, CSV) and the bad rollout's report.
    #[serde(default)]
    pub report_paths: Vec<String>,
    /// What the demo's webhook receiver saw.
    #[serde(default)]
    pub webhook: DemoWebhook,
    /// Blast radius 0, every node on the good version, and the finding closed everywhere.
    pub ok: bool,
}

/// The demo's webhook receiver.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DemoWebhook {
    /// Its URL (loopback).
    pub url: String,
    /// Deliveries of the bad rollout's halt event.
    pub halt_deliveries: u32,
    /// Distinct event ids by event type.
    pub distinct_events: BTreeMap<String, usize>,
    /// Deliveries in all.
    pub deliveries: u32,
    /// Deliveries whose signature no demo node made.
    pub unsigned: u32,
}

/// The demo's vulnerability finding, before and after its remediation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DemoIntel {
    /// The intel bundle (content id).
    pub bundle: String,
    /// The CVE.
    pub cve: String,
    /// Its highest score in the fleet.
    pub score: f64,
    /// Its due class.
    pub due: String,
    /// Nodes exposed once the bundle was published.
    pub nodes_exposed_before: usize,
    /// Nodes exposed after the good patch.
    pub nodes_exposed_after: usize,
    /// Publishing the bundle → the fleet view at node 0 counting every node.
    pub exposure_visible_ms: u64,
    /// Publishing the remediation → no node exposed.
    pub closed_after_ms: u64,
}

/// One rollout of the demo.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoRollout {
    /// Rollout id (hex).
    pub rollout: String,
    /// Payload content id (hex).
    pub content_id: String,
    /// Per ring.
    pub rings: Vec<DemoRing>,
}

/// One ring of a demo rollout.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DemoRing {
    /// Name.
    pub name: String,
    /// Members.
    pub targeted: u64,
    /// Committed.
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// Rolled back.
    pub rolled_back: u64,
    /// Publication → its last member settled.
    pub duration_ms: u64,
    /// The rehearsal's prediction of `duration_ms` (`rollout plan`): p50 and p90 over seeds.
    #[serde(default)]
    pub predicted_ms: Option<[u64; 2]>,
    /// The rehearsal's targeted members.
    #[serde(default)]
    pub predicted_targeted: Option<u64>,
}

/// WAN bytes one site paid for one payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoWan {
    /// Payload content id (hex).
    pub content_id: String,
    /// Site index.
    pub site: usize,
    /// Bytes its nodes received from other sites.
    pub wan_bytes: u64,
    /// `wan_bytes` ÷ payload size.
    pub ratio: f64,
}

/// `patchmesh key show --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyShowOutput {
    /// The public key (hex).
    pub public_key: String,
    /// Where the secret is held: `encrypted file`, `plain file` or `ssh-agent`.
    pub storage: String,
    /// The OpenSSH SHA-256 fingerprint of the public key.
    pub ssh_fingerprint: String,
}

/// One role in `patchmesh admin show --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminRoleOutput {
    /// Its name.
    pub name: String,
    /// The admin keys holding it (hex).
    pub keys: Vec<String>,
    /// What it permits.
    pub permissions: Vec<String>,
    /// Sites it is limited to (empty: every site).
    pub sites: Vec<String>,
    /// Labels it is limited to.
    pub labels: BTreeMap<String, String>,
    /// Distinct approving keys a rollout it publishes needs (0: the mesh's rule).
    pub publish_approvals: u8,
}

/// `patchmesh admin show --json`: the admin set in force.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminShowOutput {
    /// Admin set version.
    pub version: u64,
    /// Admin keys (hex).
    pub admins: Vec<String>,
    /// Revoked admin keys (hex).
    pub revoked: Vec<String>,
    /// Root signatures a new admin set needs.
    pub root_threshold: u8,
    /// Root keys (hex).
    pub root_keys: Vec<String>,
    /// Admin signatures a large rollout needs.
    pub approval_threshold: u8,
    /// Rollouts that may reach more nodes than this are large.
    pub approval_above_nodes: u32,
    /// Empty: every admin may do everything everywhere.
    pub roles: Vec<AdminRoleOutput>,
}

/// One edit of a catalog change in a `--dry-run` output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DryRunEdit {
    /// Catalog key.
    pub key: String,
    /// The entry put there (none: the key is removed).
    pub put: Option<CatalogEntry>,
}

/// What a publishing command prints with `--dry-run`: the change it would sign, unsigned and
/// unsent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DryRunOutput {
    /// Always true.
    pub dry_run: bool,
    /// The admin key that would sign (hex).
    pub signer: String,
    /// The edits.
    pub edits: Vec<DryRunEdit>,
}

/// `patchmesh voucher create --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VoucherCreateOutput {
    /// Voucher id (hex).
    pub id: String,
    /// Site the machines join.
    pub site: String,
    /// The most machines it admits.
    pub max_nodes: u32,
    /// No enrolment after this.
    pub expires_at_ms: u64,
    /// Each machine waits for an admin's approval.
    pub require_approval: bool,
    /// The token a new machine enrols with.
    pub token: String,
}

/// `patchmesh node enroll --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollOutput {
    /// The new node's id (hex).
    pub node: String,
    /// Its site.
    pub site: String,
    /// The voucher it enrolled with (hex).
    pub voucher: String,
    /// The configuration written.
    pub config: PathBuf,
    /// Its key file.
    pub key: PathBuf,
    /// Its admission file.
    pub admission: PathBuf,
    /// It waits for an admin's approval.
    pub require_approval: bool,
}

/// How a `patchmesh node doctor` check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DoctorLevel {
    /// Fine.
    Ok,
    /// Works, but should be looked at.
    Warn,
    /// Broken.
    Fail,
}

/// One check of `patchmesh node doctor`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DoctorCheck {
    /// What was checked (`config`, `certificate`, `clock`, …).
    pub check: String,
    /// How it came out.
    pub level: DoctorLevel,
    /// What was found.
    pub detail: String,
    /// What to do about it, for a warning or a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// `patchmesh node doctor --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DoctorOutput {
    /// Every check, in the order run.
    pub checks: Vec<DoctorCheck>,
    /// The worst level.
    pub result: DoctorLevel,
}

/// Where a setting of `patchmesh config view` came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettingOrigin {
    /// A command-line flag.
    Flag,
    /// An environment variable.
    Env(String),
    /// A context (named), or the file's current context.
    Context(String),
    /// The current context in the contexts file.
    Current,
    /// The built-in default.
    Default,
    /// Not set.
    Unset,
}

/// One setting of `patchmesh config view`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigSetting {
    /// Its value, if set.
    pub value: Option<String>,
    /// Where it came from.
    pub origin: SettingOrigin,
}

/// `patchmesh config view --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigViewOutput {
    /// The contexts file.
    pub contexts_file: PathBuf,
    /// The context in use.
    pub context: ConfigSetting,
    /// The node configuration.
    pub config: ConfigSetting,
    /// The admin key.
    pub admin_key: ConfigSetting,
}

/// One tenant's answer under `--all-contexts`: `result` is the command's output (its JSON with
/// `--json`, else its text as a string).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TenantResult<T = serde_json::Value> {
    /// The context.
    pub context: String,
    /// The command succeeded.
    pub ok: bool,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// How long it took.
    pub elapsed_ms: u64,
    /// What it printed, when it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `patchmesh --all-contexts … --json`: one result per tenant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllContextsOutput<T = serde_json::Value> {
    /// Per context, in name order.
    pub tenants: Vec<TenantResult<T>>,
}

/// The line `patchmesh --all-contexts dashboard --json` prints once its tenant switcher
/// listens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwitcherOutput {
    /// The switcher's secret URL (loopback).
    pub url: String,
    /// The tenants it lists.
    pub tenants: Vec<String>,
}

/// `patchmesh intel import --json`: the bundle built, and its catalog change if published.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportOut {
    /// The bundle's content id (hex).
    pub content_id: String,
    /// Its size.
    pub bytes: u64,
    /// How long the import took.
    pub import_ms: u64,
    /// The catalog change that published it, with `--admin-key`.
    pub published: Option<String>,
    /// What it holds.
    #[serde(flatten)]
    pub written: crate::intel::Written,
}

/// `patchmesh vulns --json` for one machine (`--bundle` with `--root`, or `--node self`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VulnsOut {
    /// The intel bundle (content id).
    pub bundle: String,
    /// The machine's release codename.
    pub release: String,
    /// Its findings that pass the filters, ranked.
    pub findings: Vec<Assessed>,
}

/// One CVE across the sites a node sees.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetRow {
    /// The CVE.
    pub cve: String,
    /// Source packages it is found in.
    pub sources: BTreeSet<String>,
    /// Exposed nodes, all sites.
    pub nodes: u32,
    /// Exposed nodes per site.
    pub sites: BTreeMap<String, u32>,
    /// Highest risk score.
    pub score: f64,
    /// Most urgent due class.
    pub due: Due,
    /// A version that fixes it, if known.
    pub fixed_version: Option<String>,
    /// In the KEV catalog.
    pub kev: bool,
}

/// `patchmesh vulns --json` with a running node (its fleet view): the sites shown and one
/// row per CVE.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetVulnsOut {
    /// The intel bundle the sites' exposure was judged with.
    pub bundle: Option<String>,
    /// The sites shown.
    pub sites: Vec<SiteExposureView>,
    /// One row per CVE, most urgent first.
    pub cves: Vec<FleetRow>,
}

/// One finding of the checks `rollout create` and `rollout plan` run before anything is signed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlanFinding {
    /// "refused" (a hard problem: `--force` goes ahead anyway), "warning", or with
    /// `plan --rollout` (nothing signed) "problem".
    pub level: String,
    /// What is wrong, and what it does.
    pub message: String,
}

/// Where installs wait for a window, per time zone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WindowWait {
    /// The zone.
    pub zone: String,
    /// Targeted members in it.
    pub nodes: u64,
    /// When a window first opens there (local time), if within eight days.
    pub opens_at: Option<String>,
    /// From now until installs may start there (window or deadline).
    pub starts_in_ms: Option<u64>,
    /// True when the deadline comes first: installs start outside any window.
    pub at_deadline: bool,
}

/// What the rehearsal assumed rather than read.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PlanEstimated {
    /// Sites rebuilt from their summaries (kinds exact, ids drawn).
    pub sites_from_summaries: usize,
    /// Members whose kind no summary lists (no labels, this node's zone).
    pub members_of_unknown_kind: u64,
    /// Members with no zone in their record (this node's zone).
    pub members_without_zone: u64,
    /// Sites with no measured round trip (--wan-rtt-ms).
    pub sites_without_rtt: usize,
    /// WAN bandwidth: given, measured from this node's downloads, its configured cap, or
    /// assumed.
    pub wan_bandwidth: String,
    /// Install duration: "measured over N installs" or "assumed".
    pub install_duration: String,
    /// Percent rings: each node's ring is a hash of the rollout id and node id; the
    /// rehearsal draws ids, so ring sizes vary by seed as they will for the real id.
    pub percent_rings_drawn: bool,
}

/// A signed rollout's progress so far (`rollout plan --rollout`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PlanProgress {
    /// The rollout.
    pub rollout: String,
    /// How long ago it was created (ms).
    pub created_ms_ago: u64,
    /// running, paused, halted, aborted (or unknown before its first evaluation here).
    pub control: String,
    /// Why the next ring is not open yet.
    pub waiting: Option<String>,
    /// Per ring: name, targeted, succeeded, failed or rolled back.
    pub rings: Vec<(String, u32, u32, u32)>,
}

impl PlanProgress {
    /// The progress a node's view of the rollout shows at `now`.
    pub fn of(v: &RolloutView, now: Millis) -> PlanProgress {
        PlanProgress {
            rollout: v.id.clone(),
            created_ms_ago: now.0.saturating_sub(v.created_at_ms),
            control: v.state().to_string(),
            waiting: v.waiting.clone().filter(|w| !w.trim().is_empty()),
            rings: v
                .rings
                .iter()
                .map(|r| {
                    let c = &r.counts;
                    (r.name.clone(), c.targeted, c.succeeded, c.failed + c.rolled_back)
                })
                .collect(),
        }
    }
}

/// `patchmesh rollout plan --json`: the checks, what the rehearsal assumed, and `R`, what the
/// simulator predicts (`patchmesh_sim::rehearsal::Rehearsal`, which this crate does not
/// depend on).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlanOutput<R> {
    /// With `--rollout`: the signed rollout's progress so far, as this node counts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<PlanProgress>,
    /// Checks before anything is signed.
    pub findings: Vec<PlanFinding>,
    /// Known nodes outside the target (left out of the rehearsal).
    pub outside_nodes: u64,
    /// Sites with targeted nodes.
    pub sites: usize,
    /// Per time zone, when installs may start.
    pub windows: Vec<WindowWait>,
    /// WAN bytes into each site with targeted nodes: one copy of the payload.
    pub wan_bytes_per_site: u64,
    /// What the rehearsal assumed rather than read.
    pub estimated: PlanEstimated,
    /// What the simulator predicts.
    #[serde(flatten)]
    pub rehearsal: R,
}
