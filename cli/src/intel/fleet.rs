//! `patchmesh vulns` against a running node: every site's exposure as the node sees it, merged
//! into one row per CVE.

use super::*;

/// Merges the sites' top CVEs into one row per CVE.
pub(super) fn fleet_rows(sites: &[&SiteExposureView]) -> BTreeMap<String, FleetRow> {
    let mut rows: BTreeMap<String, FleetRow> = BTreeMap::new();
    for s in sites {
        for c in &s.exposure.top {
            let r = rows.entry(c.cve.clone()).or_insert_with(|| FleetRow {
                cve: c.cve.clone(),
                sources: Default::default(),
                nodes: 0,
                sites: BTreeMap::new(),
                score: 0.0,
                due: c.due,
                fixed_version: None,
                kev: false,
            });
            r.sources.insert(c.source.clone());
            r.nodes += c.nodes;
            r.sites.insert(s.site.clone(), c.nodes);
            r.score = r.score.max(f64::from(c.score_tenths) / 10.0);
            r.due = r.due.min(c.due);
            r.kev |= c.kev;
            if c.fixed_version.is_some() && r.fixed_version.is_none() {
                r.fixed_version = c.fixed_version.clone();
            }
        }
    }
    rows
}

pub(super) fn fleet(node: &crate::NodeArgs, filter: &VulnFilter, json: bool) -> anyhow::Result<()> {
    let v: ExposureView = crate::call(node, Request::Exposure)?;
    let sites: Vec<&SiteExposureView> =
        v.sites.iter().filter(|s| filter.site.as_ref().is_none_or(|f| *f == s.site)).collect();
    if let Some(f) = &filter.site {
        if sites.is_empty() {
            anyhow::bail!(
                "no site {f} in this node's view (sites: {})",
                v.sites.iter().map(|s| s.site.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let rows = fleet_rows(&sites);
    let due_limit = filter.due.as_deref().and_then(Due::parse);
    let mut list: Vec<FleetRow> = rows
        .into_values()
        .filter(|r| {
            due_limit.is_none_or(|d| r.due <= d)
                && (!filter.kev || r.kev)
                && r.score >= filter.min_score
        })
        .collect();
    list.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.due.cmp(&b.due))
            .then(b.nodes.cmp(&a.nodes))
            .then(a.cve.cmp(&b.cve))
    });
    if json {
        let out = FleetVulnsOut {
            bundle: v.bundle.clone(),
            sites: sites.iter().map(|s| (*s).clone()).collect(),
            cves: list,
        };
        outln!("{}", crate::output::json(&out));
        return Ok(());
    }
    match &v.bundle {
        Some(b) => outln!("bundle {}  built {} ({})", &b[..16], date(v.bundle_created_at_ms), age(v.bundle_created_at_ms)),
        None => outln!("the mesh has no intel bundle yet: an admin publishes one with `patchmesh intel import … --admin-key`"),
    }
    outln!(
        "{:<16} {:>7} {:>9} {:>4} {:>4} {:>4} {:>6} {:>9} {:>4}",
        "SITE",
        "MEMBERS",
        "ON BUNDLE",
        "3D",
        "14D",
        "60D",
        "WINDOW",
        "EXCEPTION",
        "KEV"
    );
    for s in &sites {
        let on = v
            .bundle
            .as_ref()
            .and_then(|b| s.exposure.bundles.iter().find(|(c, _)| c.to_string() == *b))
            .map_or(0, |(_, (_, n))| *n);
        let c = &s.exposure.counts;
        outln!(
            "{:<16} {:>7} {:>9} {:>4} {:>4} {:>4} {:>6} {:>9} {:>4}",
            s.site,
            s.members,
            on,
            c.days3,
            c.days14,
            c.days60,
            c.window,
            c.exception,
            s.exposure.kev
        );
    }
    outln!("");
    if list.is_empty() {
        outln!("no CVEs match");
        return Ok(());
    }
    cve_table(list.iter().map(|r| CveLine {
        score: r.score,
        due: r.due,
        cve: &r.cve,
        kev: r.kev,
        nodes: r.nodes,
        sites: &r.sites,
        fix: r.fixed_version.clone().unwrap_or_else(|| "none yet".into()),
    }));
    outln!(
        "(each site summary lists its {} highest-ranked CVEs, counted over its members' {} highest findings each; `--node self` on any node shows all of its own)",
        patchmesh_protocol::limits::EXPOSURE_TOP_PER_SITE_MAX,
        patchmesh_protocol::limits::EXPOSURE_TOP_PER_RECORD_MAX
    );
    Ok(())
}
