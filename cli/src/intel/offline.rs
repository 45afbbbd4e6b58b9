//! Vulnerability views from an exported inventory and fleet file, without a node.

use super::*;

/// Reads one exported inventory: `patchmesh inventory --json` output or a bare inventory.
pub(super) fn read_inventory(path: &Path) -> anyhow::Result<Inventory> {
    let size = std::fs::metadata(path)?.len();
    if size > patchmesh_node::inventory::DPKG_STATUS_BYTES_MAX {
        anyhow::bail!("{}: {size} bytes, over the inventory limit", path.display());
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)
        .with_context(|| format!("{}: not JSON", path.display()))?;
    let inv = v.get("inventory").cloned().unwrap_or(v);
    serde_json::from_value(inv).with_context(|| format!("{}: not an inventory", path.display()))
}

/// `vulns --bundle B --fleet DIR`: the exact fleet ranking from exported inventories.
pub(super) fn offline_fleet(
    bundle: &Path,
    dir: &Path,
    args: &LocalArgs,
    filter: &VulnFilter,
    json: bool,
) -> anyhow::Result<()> {
    use patchmesh_protocol::intel::report::{rank_fleet, FleetNode, SourceVersions};
    let size = std::fs::metadata(bundle).with_context(|| format!("{}", bundle.display()))?.len();
    if size > limits::INTEL_BUNDLE_BYTES_MAX {
        anyhow::bail!("{}: {size} bytes, over the bundle limit", bundle.display());
    }
    let bytes = std::fs::read(bundle)?;
    // (site, release, interned packages) per node.
    let mut versions = SourceVersions::default();
    let mut nodes: Vec<(String, String, Vec<u32>)> = Vec::new();
    let mut sites: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    sites.sort_by_key(|e| e.file_name());
    for site in sites {
        let mut files: Vec<_> = std::fs::read_dir(site.path())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            let inv = read_inventory(&f)?;
            let installed = inv.installed();
            nodes.push((
                site.file_name().to_string_lossy().into_owned(),
                inv.codename.clone(),
                versions.intern(&installed),
            ));
        }
    }
    if nodes.is_empty() {
        anyhow::bail!("{}: no SITE/NODE.json inventories", dir.display());
    }
    let asset = Asset {
        exposure: match args.exposure.as_str() {
            "internet" => Exposure::Internet,
            "isolated" => Exposure::Isolated,
            _ => Exposure::Internal,
        },
        criticality: args.criticality,
    };
    let mut releases: Vec<String> = nodes.iter().map(|n| n.1.clone()).collect();
    releases.sort();
    releases.dedup();
    let mut ranked = Vec::new();
    for release in &releases {
        let index = NodeIndex::load_release(&bytes[..], release)
            .with_context(|| format!("{}: not a readable intel bundle", bundle.display()))?;
        let fleet: Vec<FleetNode> = nodes
            .iter()
            .filter(|n| n.1 == *release)
            .map(|n| FleetNode { site: &n.0, asset, packages: &n.2 })
            .collect();
        ranked.extend(rank_fleet(&index, &versions, &fleet));
    }
    let due_limit = filter.due.as_deref().and_then(Due::parse);
    ranked.retain(|c| {
        due_limit.is_none_or(|d| c.due <= d)
            && (!filter.kev || c.kev)
            && c.max_score >= filter.min_score
    });
    ranked.sort_by(|a, b| {
        b.max_score
            .total_cmp(&a.max_score)
            .then(a.due.cmp(&b.due))
            .then(b.nodes.cmp(&a.nodes))
            .then(a.cve.cmp(&b.cve))
    });
    if json {
        outln!("{}", crate::output::json(&ranked));
        return Ok(());
    }
    outln!("{} nodes in {} releases, {} distinct source versions; every node assessed as {} criticality {}", nodes.len(), releases.len(), versions.len(), args.exposure, args.criticality);
    cve_table(ranked.iter().map(|c| CveLine {
        score: c.max_score,
        due: c.due,
        cve: &c.cve,
        kev: c.kev,
        nodes: c.nodes,
        sites: &c.sites,
        fix: if c.fixed_versions.is_empty() {
            "none yet".into()
        } else {
            c.fixed_versions.iter().cloned().collect::<Vec<_>>().join(", ")
        },
    }));
    Ok(())
}

/// One row of a fleet CVE table.
pub(super) struct CveLine<'a> {
    pub(super) score: f64,
    pub(super) due: Due,
    pub(super) cve: &'a str,
    pub(super) kev: bool,
    pub(super) nodes: u32,
    pub(super) sites: &'a BTreeMap<String, u32>,
    pub(super) fix: String,
}

/// The fleet CVE table `vulns` prints from the node's view and from `--fleet`.
pub(super) fn cve_table<'a>(rows: impl Iterator<Item = CveLine<'a>>) {
    outln!(
        "{:>5} {:<9} {:<16} {:<3} {:>5}  {:<30} FIX",
        "SCORE",
        "DUE",
        "CVE",
        "KEV",
        "NODES",
        "BY SITE"
    );
    for r in rows {
        let by_site: Vec<String> = r.sites.iter().map(|(s, n)| format!("{s} {n}")).collect();
        outln!(
            "{:>5.1} {:<9} {:<16} {:<3} {:>5}  {:<30} {}",
            r.score,
            r.due.label(),
            r.cve,
            if r.kev { "yes" } else { "" },
            r.nodes,
            by_site.join(", "),
            r.fix
        );
    }
}
