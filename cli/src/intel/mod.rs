//! `patchmesh intel`, `vulns`, `updates` and `explain`: building intel bundles and reading
//! them against a machine's inventory.

use anyhow::Context;
use clap::{Args, Subcommand};
use patchmesh_node::control::{
    ExposureView, IntelView, Request, SiteExposureView, StatusView, VulnsOut,
};
pub use patchmesh_node::control::{FleetRow, FleetVulnsOut, ImportOut};
use patchmesh_node::intel::Import;
use patchmesh_node::inventory::{self, Inventory};
use patchmesh_protocol::catalog::{CatalogEntry, IntelEntry, IntelSourceBrief};
use patchmesh_protocol::ids::Millis;
use patchmesh_protocol::intel::apt::{updates, Update};
use patchmesh_protocol::intel::bundle::SourceInfo;
use patchmesh_protocol::intel::bundle::{BundleReader, Header};
use patchmesh_protocol::intel::matching::{judge, NodeIndex, Verdict};
use patchmesh_protocol::intel::report::{assess_node, due_counts, Assessed};
use patchmesh_protocol::intel::risk::{needs_forensic_triage, Asset, Due, Exposure};
use patchmesh_protocol::intel::{Advisory, Statement};
use patchmesh_protocol::limits;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod exception;
mod fleet;
mod offline;
mod remediate;

pub use exception::*;
use fleet::*;
use offline::*;
pub use remediate::*;

/// `patchmesh intel …`.
#[derive(Subcommand)]
pub enum IntelCmd {
    /// Build an intel bundle from vulnerability sources.
    ///
    /// Takes any mix of: the Debian Security Tracker JSON, OSV records (a directory, a .zip or
    /// .jsonl), the CISA KEV JSON, FIRST EPSS CSV (.csv or .csv.gz) and apt Packages indexes
    /// (plain, .gz, .xz, .lz4; their Release/InRelease is read from beside them). Malformed
    /// records are skipped and counted; a malformed file stops the import with its position.
    Import {
        /// Input files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to write the bundle.
        #[arg(long)]
        out: PathBuf,
        /// The bundle this one replaces: when each fix was first seen is carried forward, so
        /// due dates keep running from the fix's first appearance.
        #[arg(long)]
        previous: Option<PathBuf>,
        /// Publish the bundle to the mesh, signed with this admin key (through the node of
        /// --config, which never sees the key); every node then fetches it and reports its
        /// exposure.
        #[arg(long)]
        admin_key: Option<PathBuf>,
        #[command(flatten)]
        node: crate::NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The intel bundle this node uses, its age and sources, and this node's exposure.
    Status {
        #[command(flatten)]
        node: crate::NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish a bundle file built earlier (`intel import --out`), signed with an admin key.
    Publish {
        /// The bundle file.
        bundle: PathBuf,
        /// Admin key to sign with (it stays here; the node never sees it).
        #[arg(long)]
        admin_key: Option<PathBuf>,
        #[command(flatten)]
        node: crate::NodeArgs,
        #[command(flatten)]
        dry_run: crate::DryRun,
    },
    /// What a bundle holds: its sources, their dates and hashes, records kept and skipped.
    Show {
        /// The bundle file.
        bundle: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where the assessed machine's facts come from: the node of --config (the bundle the mesh
/// distributed), or, with --bundle, a bundle file read here against the machine under --root.
#[derive(Args, Clone)]
pub struct LocalArgs {
    /// Read this bundle file here instead of asking the node (offline).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    #[command(flatten)]
    pub node: crate::NodeArgs,
    /// Another node instead of this one (`self`, or a node id of this node's site: it serves
    /// its findings, checked against the digest in its signed record). For `vulns`, one node
    /// instead of the fleet.
    #[arg(long = "node")]
    pub node_id: Option<String>,
    /// With --bundle: root of the machine to assess (its dpkg status and os-release are read
    /// under it).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// With --bundle: rank a whole fleet from exported inventories instead of one machine:
    /// DIR/SITE/NODE.json, each as `patchmesh inventory NODE --json` prints it (or a bare
    /// inventory). Each (source, version) is matched once however many nodes have it.
    #[arg(long, requires = "bundle")]
    pub fleet: Option<PathBuf>,
    /// With --bundle: the machine's exposure (as its `exposure` admission label would say).
    #[arg(long, default_value = "internal", value_parser = ["internet", "internal", "isolated"])]
    pub exposure: String,
    /// With --bundle: the machine's criticality, 1 (least) to 4.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub criticality: u8,
}

/// Filters of `patchmesh vulns`.
#[derive(Args, Clone)]
pub struct VulnFilter {
    /// Only this site of the fleet view.
    #[arg(long)]
    pub site: Option<String>,
    /// Only findings due in this class or sooner (3d, 14d, 60d, window).
    #[arg(long, value_parser = ["3d", "14d", "60d", "window"])]
    pub due: Option<String>,
    /// Only CVEs in the KEV catalog.
    #[arg(long)]
    pub kev: bool,
    /// Only findings scoring at least this.
    #[arg(long, default_value_t = 0.0)]
    pub min_score: f64,
}

/// One machine assessed: from a bundle file read here, or from the node.
struct Subject {
    bundle_id: String,
    created_at_ms: u64,
    release: String,
    installed: usize,
    findings: Vec<Assessed>,
    updates: Vec<Update>,
    /// Read here: the index (for `explain`).
    index: Option<NodeIndex>,
    /// Another node, asked through this one.
    remote: Option<String>,
}

impl Subject {
    fn advisories(
        &self,
        cve: &str,
        node: &crate::NodeArgs,
    ) -> anyhow::Result<Vec<(String, Advisory)>> {
        match &self.index {
            Some(index) => Ok(index
                .advisories
                .iter()
                .flat_map(|(s, list)| {
                    list.iter().filter(|a| a.cve == cve).map(move |a| (s.clone(), a.clone()))
                })
                .collect()),
            None => Ok(crate::call(
                node,
                Request::Advisories { cve: cve.to_string(), node: self.remote.clone() },
            )?),
        }
    }
}

/// The node id `--node` names, unless it is this node.
fn other_node(args: &LocalArgs) -> anyhow::Result<Option<String>> {
    let Some(id) = &args.node_id else { return Ok(None) };
    if args.bundle.is_some() {
        anyhow::bail!("--node asks a node; --bundle reads a file here: give one of them");
    }
    if id == "self" {
        return Ok(None);
    }
    let me: StatusView = crate::call(&args.node, Request::Status)?;
    Ok((*id != me.node).then(|| id.clone()))
}

fn subject(args: &LocalArgs) -> anyhow::Result<Subject> {
    if let Some(id) = other_node(args)? {
        let v: patchmesh_node::control::RemoteFindingsView =
            crate::call(&args.node, Request::Findings { node: id.clone() })?;
        let summary = v.summary.context("the node gave no signed summary")?;
        return Ok(Subject {
            bundle_id: summary.bundle.to_string(),
            created_at_ms: summary.bundle_created_at.0,
            release: v.release,
            installed: 0,
            findings: v.findings,
            updates: v.updates,
            index: None,
            remote: Some(id),
        });
    }
    let Some(_) = &args.bundle else {
        let v: IntelView = crate::call(&args.node, Request::Intel)?;
        let Some(bundle_id) = v.bundle else {
            match v.loading {
                Some(c) => anyhow::bail!("the node is still fetching intel bundle {c}; try again shortly"),
                None => anyhow::bail!("the mesh has no intel bundle yet: an admin publishes one with `patchmesh intel import … --admin-key`"),
            }
        };
        return Ok(Subject {
            bundle_id,
            created_at_ms: v.bundle_created_at_ms,
            release: v.release,
            installed: 0,
            findings: v.findings,
            updates: v.updates,
            index: None,
            remote: None,
        });
    };
    let l = load(args)?;
    let installed = l.inventory.installed();
    Ok(Subject {
        findings: assess_node(&l.index, &installed, &l.asset),
        updates: updates(&l.index, &installed),
        bundle_id: l.bundle_id,
        created_at_ms: l.header.created_at.0,
        release: l.inventory.codename,
        installed: installed.len(),
        index: Some(l.index),
        remote: None,
    })
}

struct Local {
    header: Header,
    bundle_id: String,
    inventory: Inventory,
    index: NodeIndex,
    asset: Asset,
}

fn load(args: &LocalArgs) -> anyhow::Result<Local> {
    let bundle = args.bundle.as_ref().context("no --bundle")?;
    let inventory = inventory::collect(&inventory::Sources { root: &args.root })
        .with_context(|| format!("reading the inventory under {}", args.root.display()))?;
    if inventory.codename.is_empty() {
        anyhow::bail!(
            "{}: no VERSION_CODENAME in etc/os-release, so no release to scope the look-ups",
            args.root.display()
        );
    }
    let size = std::fs::metadata(bundle).with_context(|| format!("{}", bundle.display()))?.len();
    if size > limits::INTEL_BUNDLE_BYTES_MAX {
        anyhow::bail!(
            "{}: {size} bytes, over the bundle limit of {}",
            bundle.display(),
            limits::INTEL_BUNDLE_BYTES_MAX
        );
    }
    let bytes = std::fs::read(bundle).with_context(|| format!("{}", bundle.display()))?;
    let installed = inventory.installed();
    let index = NodeIndex::load(&bytes[..], &inventory.codename, &installed)
        .with_context(|| format!("{}: not a readable intel bundle", bundle.display()))?;
    let header = index.header.clone().context("bundle without header")?;
    let exposure = match args.exposure.as_str() {
        "internet" => Exposure::Internet,
        "isolated" => Exposure::Isolated,
        _ => Exposure::Internal,
    };
    Ok(Local {
        header,
        bundle_id: hex::encode(blake3::hash(&bytes).as_bytes()),
        inventory,
        index,
        asset: Asset { exposure, criticality: args.criticality },
    })
}

fn age(created_ms: u64) -> String {
    let now = patchmesh_node::clock::now_ms().0;
    let h = now.saturating_sub(created_ms) / 3_600_000;
    if h < 48 {
        format!("{h} h old")
    } else {
        format!("{} days old", h / 24)
    }
}

pub fn date(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn banner(s: &Subject) {
    let installed = if s.installed > 0 {
        format!("  {} packages installed", s.installed)
    } else {
        String::new()
    };
    outln!(
        "bundle {}  built {} ({})  release {}{installed}",
        &s.bundle_id[..16.min(s.bundle_id.len())],
        date(s.created_at_ms),
        age(s.created_at_ms),
        s.release,
    );
}

/// `patchmesh intel import`.
pub fn import(
    files: &[PathBuf],
    out: &Path,
    previous: Option<&Path>,
    admin_key: Option<&Path>,
    node: &crate::NodeArgs,
    json: bool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let created_at = patchmesh_node::clock::now_ms();
    let mut imp = Import::new(created_at);
    if let Some(p) = previous {
        imp.previous(p)?;
    }
    for f in files {
        imp.add(f)?;
    }
    let tmp = out.with_extension("partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = imp
        .write(std::io::BufWriter::new(file))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    let bytes = std::fs::read(out)?;
    let id = hex::encode(blake3::hash(&bytes).as_bytes());
    let published = match admin_key {
        Some(k) => {
            let admin = crate::keys::AdminKey::resolve(Some(k))?;
            Some(publish(node, &admin, out, &written.sources, created_at)?)
        }
        None => None,
    };
    if json {
        outln!(
            "{}",
            crate::output::json(&ImportOut {
                content_id: id.clone(),
                bytes: bytes.len() as u64,
                import_ms: started.elapsed().as_millis() as u64,
                published: published.clone(),
                written: written.clone(),
            })
        );
        return Ok(());
    }
    sources_table(&written.sources);
    outln!(
        "bundle {} -> {} ({} bytes, {} advisories, {} CVEs with facts, {} index entries) in {} ms",
        &id[..16],
        out.display(),
        bytes.len(),
        written.advisories,
        written.cves,
        written.index_packages,
        started.elapsed().as_millis()
    );
    if let Some(key) = published {
        outln!(
            "published {key}: every node fetches it and reports its exposure (`patchmesh vulns`)"
        );
    }
    Ok(())
}

fn sources_table(sources: &[patchmesh_protocol::intel::bundle::SourceInfo]) {
    outln!("{:<14} {:<48} {:>9} {:>8}  {}", "KIND", "SOURCE", "KEPT", "SKIPPED", "DATE");
    for s in sources {
        let skipped: u64 = s.skipped.values().sum();
        outln!(
            "{:<14} {:<48} {:>9} {:>8}  {}",
            format!("{:?}", s.kind),
            s.name,
            s.records,
            skipped,
            s.date.as_deref().unwrap_or("-")
        );
        for (reason, n) in &s.skipped {
            outln!("{:<14}   skipped {n}: {reason}", "");
        }
    }
}

/// `patchmesh intel publish`: checks the file is a readable bundle within the limit, then
/// publishes it with the sources and date its header states.
pub fn publish_file(
    bundle: &Path,
    admin_key: Option<&Path>,
    node: &crate::NodeArgs,
) -> anyhow::Result<()> {
    let size = std::fs::metadata(bundle).with_context(|| format!("{}", bundle.display()))?.len();
    if size > limits::INTEL_BUNDLE_BYTES_MAX {
        anyhow::bail!(
            "{}: {size} bytes, over the bundle limit of {}",
            bundle.display(),
            limits::INTEL_BUNDLE_BYTES_MAX
        );
    }
    let file = std::fs::File::open(bundle).with_context(|| format!("{}", bundle.display()))?;
    let (header, mut reader) = BundleReader::open(std::io::BufReader::new(file))
        .with_context(|| format!("{}: not a readable intel bundle", bundle.display()))?;
    while reader
        .next_frame()
        .with_context(|| format!("{}: not a readable intel bundle", bundle.display()))?
        .is_some()
    {}
    let admin = crate::keys::AdminKey::resolve(admin_key)?;
    let key = publish(node, &admin, bundle, &header.sources, header.created_at)?;
    outln!("published {key}: every node fetches it and reports its exposure (`patchmesh vulns`)");
    Ok(())
}

/// `patchmesh intel show`.
pub fn show(bundle: &Path, json: bool) -> anyhow::Result<()> {
    let size = std::fs::metadata(bundle).with_context(|| format!("{}", bundle.display()))?.len();
    if size > limits::INTEL_BUNDLE_BYTES_MAX {
        anyhow::bail!("{}: {size} bytes, over the bundle limit", bundle.display());
    }
    let bytes = std::fs::read(bundle)?;
    let (header, _) = BundleReader::open(&bytes[..])
        .with_context(|| format!("{}: not a readable intel bundle", bundle.display()))?;
    if json {
        outln!("{}", crate::output::json(&header));
        return Ok(());
    }
    outln!(
        "bundle {}  built {} ({})  {} bytes",
        &hex::encode(blake3::hash(&bytes).as_bytes())[..16],
        date(header.created_at.0),
        age(header.created_at.0),
        bytes.len()
    );
    sources_table(&header.sources);
    Ok(())
}

fn keep(a: &Assessed, f: &VulnFilter) -> bool {
    let due_ok = match f.due.as_deref().and_then(Due::parse) {
        Some(limit) => a.risk.due <= limit,
        None => true,
    };
    due_ok && (!f.kev || a.risk.inputs.kev) && a.risk.score >= f.min_score
}

fn fix_text(v: &Verdict) -> String {
    match v {
        Verdict::Affected { fixed_version, in_security } => {
            format!("{fixed_version}{}", if *in_security { " (security)" } else { "" })
        }
        Verdict::Open { reason } => {
            format!("none yet{}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())
        }
        Verdict::Undetermined => "undetermined".into(),
        Verdict::Fixed { fixed_version } => format!("fixed in {fixed_version}"),
        Verdict::NotAffected => "not affected".into(),
    }
}

/// `patchmesh vulns`: the fleet (from the node's view), one site, or one machine.
pub fn vulns(args: &LocalArgs, filter: &VulnFilter, json: bool) -> anyhow::Result<()> {
    if let (Some(bundle), Some(dir)) = (&args.bundle, &args.fleet) {
        return offline_fleet(bundle, dir, args, filter, json);
    }
    if args.bundle.is_none() && args.node_id.is_none() {
        return fleet(&args.node, filter, json);
    }
    if let Some(id) = &args.node_id {
        let me: StatusView = crate::call(&args.node, Request::Status)?;
        if id != "self" && *id != me.node {
            let v: patchmesh_node::control::RemoteFindingsView =
                crate::call(&args.node, Request::Findings { node: id.clone() })?;
            return remote_vulns(&v, filter, json);
        }
    }
    let s = subject(args)?;
    let shown: Vec<&Assessed> = s.findings.iter().filter(|a| keep(a, filter)).collect();
    if json {
        let v = VulnsOut {
            bundle: s.bundle_id.clone(),
            release: s.release.clone(),
            findings: shown.into_iter().cloned().collect(),
        };
        outln!("{}", crate::output::json(&v));
        return Ok(());
    }
    banner(&s);
    findings_table(&shown);
    let c = due_counts(&s.findings);
    let excepted = s
        .findings
        .iter()
        .filter(|a| a.finding.verdict.exposed() && a.finding.excepted.is_some())
        .count();
    outln!(
        "{} exposed findings: {} due in 3 days, {} in 14 days, {} in 60 days, {} at the next window, {} without a fix (exception needed); {excepted} more under an exception",
        c.total(),
        c.days3,
        c.days14,
        c.days60,
        c.window,
        c.exception
    );
    Ok(())
}

/// Another node's findings, checked against its signed digest by the node asked.
fn remote_vulns(
    v: &patchmesh_node::control::RemoteFindingsView,
    filter: &VulnFilter,
    json: bool,
) -> anyhow::Result<()> {
    let shown: Vec<&Assessed> = v.findings.iter().filter(|a| keep(a, filter)).collect();
    if json {
        outln!("{}", crate::output::json(v));
        return Ok(());
    }
    if let Some(s) = &v.summary {
        outln!(
            "node {}  bundle {}  built {} ({}); findings checked against its signed record",
            v.node,
            &s.bundle.to_string()[..16],
            date(s.bundle_created_at.0),
            age(s.bundle_created_at.0)
        );
    }
    findings_table(&shown);
    Ok(())
}

fn findings_table(shown: &[&Assessed]) {
    if shown.is_empty() {
        outln!("no findings match");
        return;
    }
    outln!(
        "{:>5} {:<14} {:<16} {:<3} {:<18} {:<24} {}",
        "SCORE",
        "DUE",
        "CVE",
        "KEV",
        "SOURCE",
        "INSTALLED",
        "FIX"
    );
    for a in shown {
        let f = &a.finding;
        let (score, due) = match a.risk.due_at {
            _ if !f.verdict.exposed() => ("-".to_string(), "-".to_string()),
            _ if f.excepted.is_some() => (format!("{:.1}", a.risk.score), "excepted".to_string()),
            Some(at) => (
                format!("{:.1}", a.risk.score),
                format!("{} {}", a.risk.due.label(), date(at.0).get(..10).unwrap_or("")),
            ),
            None => (format!("{:.1}", a.risk.score), a.risk.due.label().to_string()),
        };
        let excepted = f.excepted.as_ref().map(|e| {
            let kind = match e.kind {
                patchmesh_protocol::intel::exception::ExceptionKind::RiskAccepted => {
                    "risk accepted"
                }
                patchmesh_protocol::intel::exception::ExceptionKind::NotAffected => "not affected",
            };
            format!(
                "  [{kind} until {}: {}]",
                date(e.expires_at.0).get(..10).unwrap_or(""),
                e.justification
            )
        });
        let disagree = if f.disagreements.is_empty() {
            String::new()
        } else {
            let said: Vec<String> =
                f.disagreements.iter().map(|(o, v)| format!("{o} says {}", v.word())).collect();
            format!("  [sources disagree: {}]", said.join(", "))
        };
        outln!(
            "{:>5} {:<14} {:<16} {:<3} {:<18} {:<24} {}{}{disagree}",
            score,
            due,
            f.cve,
            if a.risk.inputs.kev { "yes" } else { "" },
            f.source,
            f.source_version,
            fix_text(&f.verdict),
            excepted.unwrap_or_default(),
        );
    }
}

/// `patchmesh updates`.
pub fn updates_cmd(args: &LocalArgs, security: bool, json: bool) -> anyhow::Result<()> {
    let s = subject(args)?;
    let list: Vec<&Update> = s.updates.iter().filter(|u| !security || u.security).collect();
    if json {
        outln!("{}", crate::output::json(&list));
        return Ok(());
    }
    banner(&s);
    outln!("{:<32} {:<7} {:<28} {:<28} {}", "PACKAGE", "ARCH", "INSTALLED", "CANDIDATE", "FROM");
    for u in &list {
        outln!(
            "{:<32} {:<7} {:<28} {:<28} {}{}",
            u.name,
            u.arch,
            u.installed,
            u.candidate,
            u.suites.join(","),
            if u.security { " (security)" } else { "" }
        );
    }
    outln!(
        "{} upgradable, {} from a security suite",
        list.len(),
        list.iter().filter(|u| u.security).count()
    );
    Ok(())
}

/// `patchmesh explain CVE`.
pub fn explain(cve: &str, args: &LocalArgs, json: bool) -> anyhow::Result<()> {
    let s = subject(args)?;
    let found: Vec<&Assessed> = s.findings.iter().filter(|a| a.finding.cve == cve).collect();
    let advisories = s.advisories(cve, &args.node)?;
    if json {
        #[derive(Serialize)]
        struct View<'a> {
            bundle: &'a str,
            release: &'a str,
            advisories: &'a [(String, Advisory)],
            findings: &'a [&'a Assessed],
        }
        outln!(
            "{}",
            crate::output::json(&View {
                bundle: &s.bundle_id,
                release: &s.release,
                advisories: &advisories,
                findings: &found
            })
        );
        return Ok(());
    }
    banner(&s);
    if found.is_empty() {
        if advisories.is_empty() {
            outln!("{cve}: no advisory in this bundle names a source package installed here for release {}", s.release);
        } else {
            outln!("{cve}: the bundle has advisories for installed source packages, and none leaves this machine exposed (fixed or not affected)");
        }
        return Ok(());
    }
    for a in found {
        explain_one(&s, &advisories, a);
    }
    Ok(())
}

fn explain_one(s: &Subject, advisories: &[(String, Advisory)], a: &Assessed) {
    let f = &a.finding;
    outln!("");
    outln!(
        "{} in source package {} {} (binaries: {})",
        f.cve,
        f.source,
        f.source_version,
        f.binaries.join(", ")
    );
    if let Some(info) = &a.info {
        if !info.description.is_empty() {
            outln!("  {}", info.description);
        }
    }
    for (_, adv) in advisories.iter().filter(|(src, _)| *src == f.source) {
        let v = judge(&adv.statement, &f.source_version);
        let how = match &adv.statement {
            Statement::Tracker { status, fixed_version, urgency, nodsa, fixed_in_security } => {
                format!(
                    "status {status:?}, fixed_version {}, urgency {urgency:?}{}{}",
                    fixed_version.as_deref().unwrap_or("-"),
                    nodsa.as_deref().map(|n| format!(", no DSA: {n}")).unwrap_or_default(),
                    if *fixed_in_security { ", in the -security suite" } else { "" }
                )
            }
            Statement::Osv { ranges, versions } => {
                let ranges: Vec<String> = ranges
                    .iter()
                    .map(|r| r.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
                    .collect();
                let listed = if versions.is_empty() {
                    String::new()
                } else {
                    format!("; versions {}", versions.join(", "))
                };
                format!("range {}{listed}", ranges.join(" | "))
            }
        };
        outln!("  {} for {}: {how}", adv.origin, s.release);
        let cmp = match &v {
            Verdict::Affected { fixed_version, .. } => {
                format!("installed {} < fixed {} (dpkg order)", f.source_version, fixed_version)
            }
            Verdict::Fixed { fixed_version } => {
                format!("installed {} >= fixed {} (dpkg order)", f.source_version, fixed_version)
            }
            _ => String::new(),
        };
        outln!("    -> {}{}", v.word(), if cmp.is_empty() { cmp } else { format!(" ({cmp})") });
    }
    let r = &a.risk;
    if !f.verdict.exposed() {
        outln!(
            "  not exposed: the {} counts ({}); the disagreement is shown so it can be checked",
            f.origin,
            f.verdict.word()
        );
        outln!("  bundle {} built {}", &s.bundle_id[..16], date(s.created_at_ms));
        return;
    }
    outln!(
        "  due: {} (exposed {}, KEV {}, automatable {}, total impact {}; CISA BOD 26-04 Table 1){}{}",
        r.due.label(),
        r.inputs.exposed,
        r.inputs.kev,
        r.inputs.automatable,
        r.inputs.total_impact,
        r.due_at.map(|d| format!(", by {} (fix first seen {})", date(d.0), f.fix_seen_at.map(|x| date(x.0)).unwrap_or_default())).unwrap_or_default(),
        if needs_forensic_triage(r.inputs) { "; the directive also asks for forensic triage" } else { "" }
    );
    outln!(
        "  score {:.1} = 100 × likelihood {:.2} ({}) × impact {:.2} ({}) × asset {:.3} ({})",
        r.score,
        r.likelihood.0,
        r.likelihood.1,
        r.impact.0,
        r.impact.1,
        r.asset.0,
        r.asset.1
    );
    outln!("  bundle {} built {}", &s.bundle_id[..16], date(s.created_at_ms));
}

/// `patchmesh intel status`.
pub fn status(node: &crate::NodeArgs, json: bool) -> anyhow::Result<()> {
    let v: IntelView = crate::call(node, Request::Intel)?;
    if json {
        outln!("{}", crate::output::json(&v));
        return Ok(());
    }
    match &v.bundle {
        None => outln!(
            "no intel bundle in use{}",
            v.loading.as_deref().map(|c| format!(" (fetching {c})")).unwrap_or_default()
        ),
        Some(b) => {
            outln!("bundle    {b}");
            outln!("built     {} ({})", date(v.bundle_created_at_ms), age(v.bundle_created_at_ms));
            outln!("release   {}", v.release);
            outln!("assessed  {}", date(v.assessed_at_ms));
            if let Some(c) = &v.loading {
                outln!("fetching  {c} (newer)");
            }
            let c = due_counts(&v.findings);
            outln!("exposed   {} findings (3d {}, 14d {}, 60d {}, window {}, exception {}); {} updates available", c.total(), c.days3, c.days14, c.days60, c.window, c.exception, v.updates.len());
        }
    }
    if let Some(sm) = &v.summary {
        let c = &sm.severity;
        outln!(
            "severity  critical {}, high {}, medium {}, low {}, unscored {}; {} in KEV; {} under an exception",
            c.critical, c.high, c.medium, c.low, c.unscored, sm.kev, sm.excepted
        );
    }
    Ok(())
}

/// Publishes a bundle file: imports it into the node's content store and signs the catalog
/// entry with the admin key here.
fn publish(
    node: &crate::NodeArgs,
    admin_key: &crate::keys::AdminKey,
    bundle: &Path,
    sources: &[SourceInfo],
    created_at: Millis,
) -> anyhow::Result<String> {
    let (content_id, size_bytes) = crate::import(node, bundle)?;
    let entry = CatalogEntry::Intel(IntelEntry {
        content_id,
        size_bytes,
        created_at,
        sources: sources
            .iter()
            .map(|s| IntelSourceBrief {
                kind: s.kind,
                name: s.name.chars().take(patchmesh_protocol::limits::TEXT_BYTES_MAX).collect(),
                blake3: s.blake3,
                date: s.date.clone(),
                records: s.records,
                skipped: s.skipped.values().sum(),
            })
            .collect(),
    });
    let key = entry.key();
    crate::publish(node, admin_key, vec![(key.clone(), Some(entry))])?;
    Ok(key)
}
