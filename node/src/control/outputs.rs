//! What the CLI prints with `--json`, read back by scripts, the tests and the demo: one
//! struct per command's output, shared by both ends like the answers in `views`.

use super::{RolloutView, SubmittedView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
