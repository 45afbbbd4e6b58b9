//! Compliance and rollout reports: built from the replicated state a node holds, signed, and
//! rendered as JSON (the signed form), self-contained HTML, CSV and PDF.
//!
//! ## What a report proves
//! The JSON form is `{"report": {...}, "signatures": [...]}`. Each signature is ed25519 over
//! the report domain and BLAKE3 of the exact bytes of the `report` object: by the node that
//! computed it (a member of the mesh, named in the report), and by an admin when one signed.
//! The report names what it was computed from: the catalog state hash, the site's records
//! root, the intel bundle, and every member's audit checkpoint, so an auditor can ask for any
//! member's audit log and check that it contains what the report says (`patchmesh audit verify
//! --checkpoint SEQ:HEAD`). Every aggregate is recomputed from the rows by
//! [`ComplianceReport::recompute`], which `report verify` runs: a figure that does not follow
//! from the rows is refused.

pub mod csv;
pub mod html;
pub mod pdf;

use crate::control::{AssetBasis, ReportBasisView, RolloutsView};
use patchmesh_protocol::crypto::{Domain, SecretKey, SignatureCheck, SignatureEntry};
use patchmesh_protocol::ids::KeyId;
use patchmesh_protocol::intel::history::HistoryEntry;
use patchmesh_protocol::intel::report::Assessed;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

mod rows;

pub use rows::*;

const DAY_MS: u64 = 86_400_000;
/// Largest report file `verify` reads.
pub const REPORT_BYTES_MAX: u64 = 512 * 1024 * 1024;

/// The frameworks a report maps its sections to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framework {
    /// PCI DSS v4.0.1.
    PciDss,
    /// SOC 2 (2017 Trust Services Criteria).
    Soc2,
    /// ISO/IEC 27001:2022 Annex A.
    Iso27001,
    /// HIPAA Security Rule.
    Hipaa,
    /// CIS Critical Security Controls v8.
    Cis,
}

impl Framework {
    /// All of them.
    pub const ALL: [Framework; 5] =
        [Framework::PciDss, Framework::Soc2, Framework::Iso27001, Framework::Hipaa, Framework::Cis];

    /// Its name as printed.
    pub fn name(self) -> &'static str {
        match self {
            Framework::PciDss => "PCI DSS v4.0.1",
            Framework::Soc2 => "SOC 2",
            Framework::Iso27001 => "ISO/IEC 27001:2022",
            Framework::Hipaa => "HIPAA Security Rule",
            Framework::Cis => "CIS Controls v8",
        }
    }

    /// Parses `pci-dss`, `soc2`, `iso27001`, `hipaa`, `cis`.
    pub fn parse(s: &str) -> Option<Framework> {
        Some(match s {
            "pci-dss" | "pci" => Framework::PciDss,
            "soc2" => Framework::Soc2,
            "iso27001" | "iso" => Framework::Iso27001,
            "hipaa" => Framework::Hipaa,
            "cis" => Framework::Cis,
            _ => return None,
        })
    }

    /// (clause, what it asks, the report sections that serve it).
    pub fn clauses(self) -> &'static [(&'static str, &'static str, &'static [&'static str])] {
        match self {
            Framework::PciDss => &[
                ("6.3.1", "Security vulnerabilities are identified and ranked by risk", &["findings", "assets"]),
                ("6.3.3", "Critical and high security patches installed within one month of release", &["sla", "findings"]),
                ("10.2.1", "Audit logs capture changes and administrative actions", &["basis", "rollouts"]),
                ("12.3.4", "Hardware and software reviewed; exceptions documented", &["exceptions"]),
            ],
            Framework::Soc2 => &[
                ("CC7.1", "Detection and monitoring procedures identify vulnerabilities and configuration changes", &["findings", "assets", "coverage"]),
                ("CC7.2", "System components are monitored for anomalies", &["rollouts", "coverage"]),
                ("CC8.1", "Changes are authorized, tested, approved and implemented", &["rollouts"]),
                ("CC3.2", "Risks are identified and analysed; accepted risks documented", &["exceptions", "findings"]),
            ],
            Framework::Iso27001 => &[
                ("A.8.8", "Management of technical vulnerabilities", &["findings", "sla", "exceptions"]),
                ("A.8.32", "Change management", &["rollouts"]),
                ("A.8.15", "Logging", &["basis"]),
                ("A.5.9", "Inventory of information and other associated assets", &["assets", "coverage"]),
            ],
            Framework::Hipaa => &[
                ("§164.308(a)(1)(ii)(A)", "Risk analysis", &["findings", "assets"]),
                ("§164.308(a)(1)(ii)(B)", "Risk management", &["sla", "exceptions", "rollouts"]),
                ("§164.308(a)(5)(ii)(B)", "Protection from malicious software (security updates)", &["sla", "findings"]),
                ("§164.312(b)", "Audit controls", &["basis"]),
            ],
            Framework::Cis => &[
                ("7.1", "Establish and maintain a vulnerability management process", &["findings", "exceptions"]),
                ("7.3", "Perform automated operating system patch management (monthly or sooner)", &["rollouts", "sla"]),
                ("7.4", "Perform automated application patch management (monthly or sooner)", &["rollouts", "sla"]),
                ("7.7", "Remediate detected vulnerabilities (monthly or sooner)", &["sla", "findings"]),
                ("1.1", "Establish and maintain a detailed enterprise asset inventory", &["assets", "coverage"]),
            ],
        }
    }
}

/// A signed report file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignedReport<T> {
    /// The report.
    pub report: T,
    /// Signatures over its exact bytes.
    pub signatures: Vec<ReportSig>,
}

/// One signature on a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSig {
    /// `node` (the node that computed it) or `admin`.
    pub role: String,
    /// The key (hex).
    pub key: String,
    /// ed25519 over [`Domain::Report`] and BLAKE3 of the report bytes (hex).
    pub signature: String,
}

/// BLAKE3 of a report body's exact bytes.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    *blake3::hash(body).as_bytes()
}

/// Signs a body hash with a key held here (an admin key file).
pub fn sign(hash: &[u8; 32], key: &SecretKey, role: &str) -> ReportSig {
    let e = key.sign(Domain::Report, hash);
    ReportSig { role: role.into(), key: e.key.to_string(), signature: hex::encode(e.signature.0) }
}

/// Assembles the file: the body written once, its signatures beside it.
pub fn file_text(body: &str, sigs: &[ReportSig]) -> String {
    format!(
        "{{\"report\":{body},\"signatures\":{}}}\n",
        serde_json::to_string(sigs).expect("signatures serialize")
    )
}

#[derive(Deserialize)]
struct RawFile<'a> {
    #[serde(borrow)]
    report: &'a RawValue,
    signatures: Vec<ReportSig>,
}

/// Why a report does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Not a report file.
    #[error("not a report file: {0}")]
    Malformed(String),
    /// A signature fails.
    #[error(
        "the {role} signature by {key} does not verify: the report was changed after it was signed"
    )]
    BadSignature {
        /// Role.
        role: String,
        /// Key.
        key: String,
    },
    /// No signature at all.
    #[error("the report carries no signature")]
    Unsigned,
    /// A figure does not follow from the rows.
    #[error("the figure {0} does not follow from the report's rows")]
    Inconsistent(String),
}

/// Checks a report file's signatures; returns the body bytes and the signers.
pub fn verify_signatures<'a>(
    text: &'a str,
    check: &dyn SignatureCheck,
) -> Result<(&'a str, Vec<ReportSig>), VerifyError> {
    let raw: RawFile<'a> =
        serde_json::from_str(text).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if raw.signatures.is_empty() {
        return Err(VerifyError::Unsigned);
    }
    let hash = body_hash(raw.report.get().as_bytes());
    for s in &raw.signatures {
        let bad = || VerifyError::BadSignature { role: s.role.clone(), key: s.key.clone() };
        let mut key = [0u8; 32];
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&s.key, &mut key).map_err(|_| bad())?;
        hex::decode_to_slice(&s.signature, &mut sig).map_err(|_| bad())?;
        let entry =
            SignatureEntry { key: KeyId(key), signature: patchmesh_protocol::crypto::Sig(sig) };
        check.check(Domain::Report, &hash, &entry).map_err(|_| bad())?;
    }
    Ok((raw.report.get(), raw.signatures))
}

/// What a report was computed from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Basis {
    /// The catalog state hash.
    pub catalog_state: String,
    /// The generating node's site's records root.
    pub records_root: String,
    /// The intel bundle.
    pub bundle: Option<String>,
    /// When the admin made it.
    pub bundle_created_at_ms: u64,
    /// Each member's audit checkpoint in its signed record.
    pub audit_checkpoints: Vec<CheckpointRef>,
}

/// One member's audit checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// The node.
    pub node: String,
    /// Last entry covered.
    pub seq: u64,
    /// Its hash.
    pub head: String,
    /// When signed.
    pub at_ms: u64,
}

/// One asset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssetRow {
    /// Node id.
    pub node: String,
    /// Host name (as the node served it; empty when its findings could not be fetched).
    pub hostname: String,
    /// Site.
    pub site: String,
    /// OS release.
    pub os: String,
    /// Kernel.
    pub kernel: String,
    /// Ring label.
    pub ring: Option<String>,
    /// Last inventory (its latest signed record).
    pub last_inventory_ms: u64,
    /// Reported within 24 h of the report.
    pub reporting: bool,
    /// The bundle it assessed against.
    pub bundle: Option<String>,
    /// Age of that bundle at report time, days.
    pub bundle_age_days: Option<u64>,
    /// Open (not excepted) findings by due class, from its signed summary.
    pub open_by_due: BTreeMap<String, u32>,
    /// Open findings in total.
    pub open: u32,
    /// Days the oldest overdue finding is past due.
    pub oldest_overdue_days: Option<u64>,
    /// Last rollout that succeeded here: (rollout, patch name and version).
    pub last_patch: Option<(String, String)>,
    /// Whether its findings were fetched and checked against its signed digest.
    pub findings_checked: bool,
    /// Why not, if not.
    pub findings_note: Option<String>,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindingRow {
    /// Node id.
    pub node: String,
    /// Host name.
    pub hostname: String,
    /// CVE.
    pub cve: String,
    /// Source package.
    pub source: String,
    /// Binary packages.
    pub binaries: Vec<String>,
    /// Installed source version (when found).
    pub installed: String,
    /// Fixed version, if any.
    pub fixed_version: Option<String>,
    /// open, excepted or closed.
    pub status: String,
    /// CVSS severity.
    pub severity: String,
    /// On the KEV catalog.
    pub kev: bool,
    /// Due class.
    pub due_class: String,
    /// First seen.
    pub first_seen_ms: u64,
    /// When the bundle first knew a fix.
    pub fix_available_since_ms: Option<u64>,
    /// Due date.
    pub due_at_ms: Option<u64>,
    /// When it closed.
    pub remediated_at_ms: Option<u64>,
    /// Version installed when it closed.
    pub remediated_version: Option<String>,
    /// Time to remediate, days (one decimal).
    pub remediation_days: Option<f64>,
    /// Met its due date (closed by it, or open and not yet due); none without a due date.
    pub sla_met: Option<bool>,
    /// The exception covering it.
    pub exception: Option<String>,
}

/// One exception.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExceptionRow {
    /// Catalog key.
    pub key: String,
    /// CVE.
    pub cve: String,
    /// Nodes covered, in words.
    pub scope: String,
    /// risk-accepted or not-affected.
    pub kind: String,
    /// Why.
    pub justification: String,
    /// Compensating control.
    pub compensating_control: Option<String>,
    /// Approving admin key.
    pub approver: String,
    /// Created.
    pub created_ms: u64,
    /// Expires.
    pub expires_ms: u64,
    /// In force at report time.
    pub active: bool,
}

/// Another site, from its signed summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteRow {
    /// Site.
    pub site: String,
    /// Members.
    pub members: u32,
    /// Members with an exposure summary.
    pub assessed: u32,
    /// Open findings by due class.
    pub open_by_due: BTreeMap<String, u32>,
    /// KEV findings.
    pub kev: u32,
}

/// One rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutRow {
    /// Id.
    pub id: String,
    /// Patch name and version.
    pub patch: String,
    /// Created.
    pub created_ms: u64,
    /// Author key.
    pub author: String,
    /// State: running, halted at ring N, paused, aborted, awaiting approval.
    pub state: String,
    /// Approvals.
    pub approvals: Option<u32>,
    /// Per ring: (name, targeted, succeeded, failed, rolled back).
    pub rings: Vec<(String, u32, u32, u32, u32)>,
    /// Admin commands: (action, admin, at).
    pub commands: Vec<(String, String, u64)>,
    /// Failed installs, all rings.
    pub failed: u32,
    /// Rolled back, all rings.
    pub rolled_back: u32,
}

/// SLA per severity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sla {
    /// Findings with a due date closed in the period or open.
    pub counted: u32,
    /// Of them, met.
    pub met: u32,
    /// Percent met (one decimal); none when nothing counted.
    pub percent: Option<f64>,
}

/// The aggregates; each follows from the rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Members across the fleet (this site's records plus other sites' summaries).
    pub assets_admitted: u32,
    /// Assets listed one by one (this site).
    pub assets_listed: u32,
    /// Of them, reporting within 24 h.
    pub assets_reporting_24h: u32,
    /// Percent (one decimal).
    pub coverage_percent: Option<f64>,
    /// Open findings (not excepted), listed assets.
    pub open: u32,
    /// Excepted findings.
    pub excepted: u32,
    /// Closed in the period.
    pub closed_in_period: u32,
    /// Open by due class.
    pub open_by_due: BTreeMap<String, u32>,
    /// Open by severity.
    pub open_by_severity: BTreeMap<String, u32>,
    /// Open and past due.
    pub overdue: u32,
    /// Open KEV findings.
    pub kev_open: u32,
    /// SLA by severity (closed in period + open).
    pub sla_by_severity: BTreeMap<String, Sla>,
    /// SLA over all.
    pub sla_all: Sla,
    /// Mean time to remediate (days, closed in period).
    pub mttr_days_mean: Option<f64>,
    /// 90th percentile.
    pub mttr_days_p90: Option<f64>,
    /// Open findings by age since first seen: 0–7, 8–30, 31–90, >90 days.
    pub ageing: [u32; 4],
    /// Exceptions in force.
    pub exceptions_active: u32,
    /// Rollouts.
    pub rollouts: u32,
    /// Halted.
    pub rollouts_halted: u32,
    /// Installs rolled back.
    pub rolled_back: u32,
}

/// One week of the SLA trend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrendPoint {
    /// Week start.
    pub week_ms: u64,
    /// Findings closed that week.
    pub closed: u32,
    /// Of them within SLA.
    pub within_sla: u32,
    /// Opened that week.
    pub opened: u32,
}

/// A control clause and the sections that serve it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlRow {
    /// Framework.
    pub framework: String,
    /// Clause.
    pub clause: String,
    /// What it asks.
    pub title: String,
    /// Sections.
    pub evidence: Vec<String>,
}

/// A compliance report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComplianceReport {
    /// Format version.
    pub format: u32,
    /// "compliance".
    pub kind: String,
    /// The mesh name.
    pub mesh_name: String,
    /// The mesh id.
    pub mesh: String,
    /// The node that computed it.
    pub generated_by: String,
    /// Its site.
    pub generated_site: String,
    /// When.
    pub generated_at_ms: u64,
    /// Period start.
    pub since_ms: u64,
    /// Period end.
    pub until_ms: u64,
    /// Framework asked for (all when none).
    pub framework: Option<Framework>,
    /// What it was computed from.
    pub basis: Basis,
    /// Aggregates.
    pub summary: Summary,
    /// Control mapping.
    pub controls: Vec<ControlRow>,
    /// Assets.
    pub assets: Vec<AssetRow>,
    /// Findings.
    pub findings: Vec<FindingRow>,
    /// Exceptions.
    pub exceptions: Vec<ExceptionRow>,
    /// Other sites.
    pub sites: Vec<SiteRow>,
    /// Rollouts.
    pub rollouts: Vec<RolloutRow>,
    /// SLA trend by week.
    pub trend: Vec<TrendPoint>,
}

/// One asset's findings as fetched (or why not).
#[derive(Clone, Debug)]
pub struct FetchedFindings {
    /// Host name.
    pub hostname: String,
    /// Current findings (checked against the signed digest).
    pub findings: Vec<Assessed>,
    /// History.
    pub history: Vec<HistoryEntry>,
}

/// Everything [`build`] reads.
pub struct Input<'a> {
    /// The basis.
    pub basis: &'a ReportBasisView,
    /// Findings by node (hex), or why they could not be fetched.
    pub findings: &'a BTreeMap<String, Result<FetchedFindings, String>>,
    /// Rollouts as the generating node sees them.
    pub rollouts: &'a RolloutsView,
    /// Period.
    pub since_ms: u64,
    /// Period end (and "now" for ageing and SLA).
    pub until_ms: u64,
    /// Framework.
    pub framework: Option<Framework>,
}

fn severity_name(s: patchmesh_protocol::intel::risk::Severity) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{s:?}").to_lowercase())
}

fn due_name(d: patchmesh_protocol::intel::risk::Due) -> String {
    serde_json::to_value(d).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Builds a compliance report.
pub fn build(input: &Input<'_>) -> ComplianceReport {
    let b = input.basis;
    let now = input.until_ms;
    let patch_names: BTreeMap<&str, String> = input
        .rollouts
        .rollouts
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                r.patch.as_ref().map_or_else(
                    || r.content_id[..8].to_string(),
                    |p| format!("{} {}", p.name, p.version),
                ),
            )
        })
        .collect();
    let mut assets = Vec::new();
    let mut findings = Vec::new();
    for a in &b.assets {
        let fetched = input.findings.get(&a.node);
        let (hostname, note) = match fetched {
            Some(Ok(f)) => (f.hostname.clone(), None),
            Some(Err(e)) => (String::new(), Some(e.clone())),
            None => (String::new(), Some("not fetched".to_string())),
        };
        let rows = match fetched {
            Some(Ok(f)) => finding_rows(a, &hostname, f, input.since_ms, now),
            _ => Vec::new(),
        };
        assets.push(asset_row(
            a,
            hostname,
            note,
            fetched.is_some_and(|f| f.is_ok()),
            &rows,
            &patch_names,
            now,
        ));
        findings.extend(rows);
    }
    findings.sort_by(|x, y| {
        (&x.status != "open", &x.cve, &x.node).cmp(&(&y.status != "open", &y.cve, &y.node))
    });
    let exceptions = b
        .exceptions
        .iter()
        .map(|e| ExceptionRow {
            key: e.key.clone(),
            cve: e.entry.cve.clone(),
            scope: e.scope.clone(),
            kind: serde_json::to_value(e.entry.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            justification: e.entry.justification.clone(),
            compensating_control: e.entry.compensating_control.clone(),
            approver: e.approver.clone(),
            created_ms: e.entry.created_at.0,
            expires_ms: e.entry.expires_at.0,
            active: e.entry.expires_at.0 > now,
        })
        .collect();
    let sites = b
        .sites
        .iter()
        .map(|s| {
            let c = &s.exposure.counts;
            SiteRow {
                site: s.site.clone(),
                members: s.members,
                assessed: s.exposure.bundles.values().map(|(_, n)| n).sum(),
                open_by_due: due_counts(c),
                kev: s.exposure.kev,
            }
        })
        .collect();
    let rollouts = input.rollouts.rollouts.iter().map(rollout_row).collect();
    let mut checkpoints: Vec<CheckpointRef> = b
        .assets
        .iter()
        .filter_map(|a| {
            a.audit.as_ref().map(|(seq, head, at)| CheckpointRef {
                node: a.node.clone(),
                seq: *seq,
                head: head.clone(),
                at_ms: *at,
            })
        })
        .collect();
    checkpoints.sort_by(|x, y| x.node.cmp(&y.node));
    let controls = input
        .framework
        .map_or_else(|| Framework::ALL.to_vec(), |f| vec![f])
        .into_iter()
        .flat_map(|f| {
            f.clauses().iter().map(move |(clause, title, ev)| ControlRow {
                framework: f.name().into(),
                clause: (*clause).into(),
                title: (*title).into(),
                evidence: ev.iter().map(|s| s.to_string()).collect(),
            })
        })
        .collect();
    let mut report = ComplianceReport {
        format: 1,
        kind: "compliance".into(),
        mesh_name: b.mesh_name.clone(),
        mesh: b.mesh.clone(),
        generated_by: b.node.clone(),
        generated_site: b.site.clone(),
        generated_at_ms: b.now_ms,
        since_ms: input.since_ms,
        until_ms: input.until_ms,
        framework: input.framework,
        basis: Basis {
            catalog_state: b.catalog_state.clone(),
            records_root: b.records_root.clone(),
            bundle: b.bundle.clone(),
            bundle_created_at_ms: b.bundle_created_at_ms,
            audit_checkpoints: checkpoints,
        },
        summary: Summary::default(),
        controls,
        assets,
        findings,
        exceptions,
        sites,
        rollouts,
        trend: Vec::new(),
    };
    report.recompute();
    report
}

impl ComplianceReport {
    /// Recomputes every aggregate from the rows.
    pub fn recompute(&mut self) {
        let now = self.until_ms;
        let mut s = Summary {
            assets_admitted: self.assets.len() as u32
                + self.sites.iter().map(|x| x.members).sum::<u32>(),
            assets_listed: self.assets.len() as u32,
            assets_reporting_24h: self.assets.iter().filter(|a| a.reporting).count() as u32,
            ..Summary::default()
        };
        s.coverage_percent = (s.assets_listed > 0)
            .then(|| round1(100.0 * s.assets_reporting_24h as f64 / s.assets_listed as f64));
        let mut ttr = Vec::new();
        for f in &self.findings {
            match f.status.as_str() {
                "open" => {
                    s.open += 1;
                    *s.open_by_due.entry(f.due_class.clone()).or_default() += 1;
                    *s.open_by_severity.entry(f.severity.clone()).or_default() += 1;
                    if f.due_at_ms.is_some_and(|d| d < now) {
                        s.overdue += 1;
                    }
                    if f.kev {
                        s.kev_open += 1;
                    }
                    let age = if f.first_seen_ms == 0 {
                        0
                    } else {
                        now.saturating_sub(f.first_seen_ms) / DAY_MS
                    };
                    let bucket = match age {
                        0..=7 => 0,
                        8..=30 => 1,
                        31..=90 => 2,
                        _ => 3,
                    };
                    s.ageing[bucket] += 1;
                }
                "excepted" => s.excepted += 1,
                _ => {
                    s.closed_in_period += 1;
                    if let Some(d) = f.remediation_days {
                        ttr.push(d);
                    }
                }
            }
            if f.status != "excepted" {
                if let Some(met) = f.sla_met {
                    for sla in
                        [s.sla_by_severity.entry(f.severity.clone()).or_default(), &mut s.sla_all]
                    {
                        sla.counted += 1;
                        sla.met += met as u32;
                    }
                }
            }
        }
        for sla in s.sla_by_severity.values_mut().chain([&mut s.sla_all]) {
            sla.percent =
                (sla.counted > 0).then(|| round1(100.0 * sla.met as f64 / sla.counted as f64));
        }
        if !ttr.is_empty() {
            ttr.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            s.mttr_days_mean = Some(round1(ttr.iter().sum::<f64>() / ttr.len() as f64));
            let i = ((ttr.len() as f64 * 0.9).ceil() as usize).clamp(1, ttr.len()) - 1;
            s.mttr_days_p90 = Some(ttr[i]);
        }
        s.exceptions_active = self.exceptions.iter().filter(|e| e.active).count() as u32;
        s.rollouts = self.rollouts.len() as u32;
        s.rollouts_halted =
            self.rollouts.iter().filter(|r| r.state.starts_with("halted")).count() as u32;
        s.rolled_back = self.rollouts.iter().map(|r| r.rolled_back).sum();
        self.summary = s;
        // Weekly trend over the period.
        let week = 7 * DAY_MS;
        let start = self.since_ms - self.since_ms % week;
        let weeks = ((self.until_ms.saturating_sub(start)) / week + 1).min(110) as usize;
        let mut trend: Vec<TrendPoint> = (0..weeks)
            .map(|i| TrendPoint {
                week_ms: start + i as u64 * week,
                closed: 0,
                within_sla: 0,
                opened: 0,
            })
            .collect();
        let slot =
            |t: u64| (t >= start).then(|| ((t - start) / week) as usize).filter(|i| *i < weeks);
        for f in &self.findings {
            if let Some(i) = f.remediated_at_ms.and_then(slot) {
                trend[i].closed += 1;
                trend[i].within_sla += (f.sla_met == Some(true)) as u32;
            }
            if let Some(i) = (f.first_seen_ms > 0).then_some(f.first_seen_ms).and_then(slot) {
                trend[i].opened += 1;
            }
        }
        self.trend = trend;
    }

    /// The body as written into the file (compact JSON).
    pub fn body(&self) -> String {
        serde_json::to_string(self).expect("reports serialize")
    }
}

/// Checks that a report's aggregates follow from its rows.
pub fn check_consistent(body: &str) -> Result<ComplianceReport, VerifyError> {
    let report: ComplianceReport =
        serde_json::from_str(body).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let mut again = report.clone();
    again.recompute();
    if again.summary != report.summary {
        return Err(VerifyError::Inconsistent("summary".into()));
    }
    if again.trend != report.trend {
        return Err(VerifyError::Inconsistent("trend".into()));
    }
    Ok(report)
}

/// A due class in words, for people.
pub fn due_words(code: &str) -> &str {
    match code {
        "3d" => "within 3 days",
        "14d" => "within 14 days",
        "60d" => "within 60 days",
        "window" => "next window",
        "exception" => "no fix yet: decide",
        other => other,
    }
}

/// Days between two times, for tables.
pub fn date(ms: u64) -> String {
    if ms == 0 {
        return "unknown".into();
    }
    jiff::Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// Date and time.
pub fn datetime(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| ms.to_string())
}
