//! `patchmesh intel`, `vulns`, `updates` and `explain`: building intel bundles and reading
//! them against a machine's inventory.

use anyhow::Context;
use clap::{Args, Subcommand};
use patchmesh_node::intel::Import;
use patchmesh_node::inventory::{self, Inventory};
use patchmesh_protocol::intel::apt::{updates, Update};
use patchmesh_protocol::intel::bundle::{BundleReader, Header};
use patchmesh_protocol::intel::matching::{judge, NodeIndex, Verdict};
use patchmesh_protocol::intel::report::{assess_node, due_counts, Assessed};
use patchmesh_protocol::intel::risk::{needs_forensic_triage, Asset, Due, Exposure};
use patchmesh_protocol::intel::Statement;
use patchmesh_protocol::limits;
use serde::Serialize;
use std::path::{Path, PathBuf};

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
        /// Print JSON.
        #[arg(long)]
        json: bool,
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

/// Where the assessed machine's facts come from.
#[derive(Args, Clone)]
pub struct LocalArgs {
    /// The intel bundle to read.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Root of the machine to assess (its dpkg status and os-release are read under it).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The machine's exposure (as its `exposure` admission label would say).
    #[arg(long, default_value = "internal", value_parser = ["internet", "internal", "isolated"])]
    pub exposure: String,
    /// The machine's criticality, 1 (least) to 4.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub criticality: u8,
}

/// Filters of `patchmesh vulns`.
#[derive(Args, Clone)]
pub struct VulnFilter {
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

struct Local {
    header: Header,
    bundle_id: String,
    inventory: Inventory,
    index: NodeIndex,
    asset: Asset,
}

fn load(args: &LocalArgs) -> anyhow::Result<Local> {
    let inventory = inventory::collect(&inventory::Sources { root: &args.root })
        .with_context(|| format!("reading the inventory under {}", args.root.display()))?;
    if inventory.codename.is_empty() {
        anyhow::bail!(
            "{}: no VERSION_CODENAME in etc/os-release, so no release to scope the look-ups",
            args.root.display()
        );
    }
    let size = std::fs::metadata(&args.bundle)
        .with_context(|| format!("{}", args.bundle.display()))?
        .len();
    if size > limits::INTEL_BUNDLE_BYTES_MAX {
        anyhow::bail!(
            "{}: {size} bytes, over the bundle limit of {}",
            args.bundle.display(),
            limits::INTEL_BUNDLE_BYTES_MAX
        );
    }
    let bytes =
        std::fs::read(&args.bundle).with_context(|| format!("{}", args.bundle.display()))?;
    let installed = inventory.installed();
    let index = NodeIndex::load(&bytes[..], &inventory.codename, &installed)
        .with_context(|| format!("{}: not a readable intel bundle", args.bundle.display()))?;
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

fn date(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn banner(l: &Local) {
    outln!(
        "bundle {}  built {} ({})  release {}  {} packages installed",
        &l.bundle_id[..16],
        date(l.header.created_at.0),
        age(l.header.created_at.0),
        l.inventory.codename,
        l.inventory.installed().len()
    );
}

/// `patchmesh intel import`.
pub fn import(
    files: &[PathBuf],
    out: &Path,
    previous: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut imp = Import::new(patchmesh_node::clock::now_ms());
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
    if json {
        #[derive(Serialize)]
        struct View<'a> {
            content_id: &'a str,
            bytes: usize,
            import_ms: u128,
            #[serde(flatten)]
            written: &'a patchmesh_node::intel::Written,
        }
        outln!(
            "{}",
            crate::output::json(&View {
                content_id: &id,
                bytes: bytes.len(),
                import_ms: started.elapsed().as_millis(),
                written: &written
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

/// `patchmesh vulns --bundle`.
pub fn vulns(args: &LocalArgs, filter: &VulnFilter, json: bool) -> anyhow::Result<()> {
    let l = load(args)?;
    let all = assess_node(&l.index, &l.inventory.installed(), &l.asset);
    let shown: Vec<&Assessed> = all.iter().filter(|a| keep(a, filter)).collect();
    if json {
        #[derive(Serialize)]
        struct View<'a> {
            bundle: &'a str,
            release: &'a str,
            findings: &'a [&'a Assessed],
        }
        outln!(
            "{}",
            crate::output::json(&View {
                bundle: &l.bundle_id,
                release: &l.inventory.codename,
                findings: &shown
            })
        );
        return Ok(());
    }
    banner(&l);
    if shown.is_empty() {
        outln!("no findings match");
    } else {
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
    }
    for a in &shown {
        let f = &a.finding;
        let (score, due) = match a.risk.due_at {
            _ if !f.verdict.exposed() => ("-".to_string(), "-".to_string()),
            Some(at) => (
                format!("{:.1}", a.risk.score),
                format!("{} {}", a.risk.due.label(), date(at.0).get(..10).unwrap_or("")),
            ),
            None => (format!("{:.1}", a.risk.score), a.risk.due.label().to_string()),
        };
        outln!(
            "{:>5} {:<14} {:<16} {:<3} {:<18} {:<24} {}{}",
            score,
            due,
            f.cve,
            if a.risk.inputs.kev { "yes" } else { "" },
            f.source,
            f.source_version,
            fix_text(&f.verdict),
            if f.disagreements.is_empty() {
                String::new()
            } else {
                format!(
                    "  [sources disagree: {}]",
                    f.disagreements
                        .iter()
                        .map(|(o, v)| format!("{o} says {}", v.word()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    let c = due_counts(&all);
    outln!(
        "{} exposed findings: {} due in 3 days, {} in 14 days, {} in 60 days, {} at the next window, {} without a fix (exception needed)",
        c.total(),
        c.days3,
        c.days14,
        c.days60,
        c.window,
        c.exception
    );
    Ok(())
}

/// `patchmesh updates --bundle`.
pub fn updates_cmd(args: &LocalArgs, security: bool, json: bool) -> anyhow::Result<()> {
    let l = load(args)?;
    let list: Vec<Update> = updates(&l.index, &l.inventory.installed())
        .into_iter()
        .filter(|u| !security || u.security)
        .collect();
    if json {
        outln!("{}", crate::output::json(&list));
        return Ok(());
    }
    banner(&l);
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

/// `patchmesh explain CVE --bundle`.
pub fn explain(cve: &str, args: &LocalArgs, json: bool) -> anyhow::Result<()> {
    let l = load(args)?;
    let all = assess_node(&l.index, &l.inventory.installed(), &l.asset);
    let found: Vec<&Assessed> = all.iter().filter(|a| a.finding.cve == cve).collect();
    if json {
        outln!("{}", crate::output::json(&found));
        return Ok(());
    }
    banner(&l);
    if found.is_empty() {
        let named = l.index.advisories.values().flatten().any(|a| a.cve == cve);
        if named {
            outln!("{cve}: the bundle has advisories for installed source packages, and none leaves this machine exposed (fixed or not affected)");
        } else {
            outln!("{cve}: no advisory in this bundle names a source package installed here for release {}", l.inventory.codename);
        }
        return Ok(());
    }
    for a in found {
        explain_one(&l, a);
    }
    Ok(())
}

fn explain_one(l: &Local, a: &Assessed) {
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
    for adv in l.index.advisories.get(&f.source).into_iter().flatten().filter(|x| x.cve == f.cve) {
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
        outln!("  {} for {}: {how}", adv.origin, l.index.release);
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
        outln!("  bundle {} built {}", &l.bundle_id[..16], date(l.header.created_at.0));
        return;
    }
    outln!(
        "  due: {} (exposed {}, KEV {}, automatable {}, total impact {}; CISA BOD 26-04 Table 1){}{}",
        r.due.label(),
        r.inputs.exposed,
        r.inputs.kev,
        r.inputs.automatable,
        r.inputs.total_impact,
        r.due_at.map(|d| format!(", by {} (fix first seen {})", date(d.0), f.fix_seen_at.map(|s| date(s.0)).unwrap_or_default())).unwrap_or_default(),
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
    outln!("  bundle {} built {}", &l.bundle_id[..16], date(l.header.created_at.0));
}
