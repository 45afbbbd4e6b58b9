//! The report's rows: one per asset, finding and rollout, built from the basis.

use super::*;

pub(super) fn due_counts(
    c: &patchmesh_protocol::intel::report::DueCounts,
) -> BTreeMap<String, u32> {
    [
        ("3d", c.days3),
        ("14d", c.days14),
        ("60d", c.days60),
        ("window", c.window),
        ("exception", c.exception),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| (k.to_string(), n))
    .collect()
}

pub(super) fn asset_row(
    a: &AssetBasis,
    hostname: String,
    note: Option<String>,
    checked: bool,
    // This asset's rows.
    findings: &[FindingRow],
    patch_names: &BTreeMap<&str, String>,
    now: u64,
) -> AssetRow {
    let e = a.exposure.as_ref();
    let open_by_due = e.map(|e| due_counts(&e.counts)).unwrap_or_default();
    let oldest_overdue_days = findings
        .iter()
        .filter(|f| f.status == "open")
        .filter_map(|f| f.due_at_ms.filter(|d| *d < now).map(|d| (now - d) / DAY_MS))
        .max();
    let last_patch = a
        .standings
        .iter()
        .filter(|(_, _, s)| s == "succeeded" || s == "soaking")
        .max_by_key(|(id, _, _)| patch_names.get(id.as_str()).cloned())
        .map(|(id, _, _)| (id.clone(), patch_names.get(id.as_str()).cloned().unwrap_or_default()));
    AssetRow {
        node: a.node.clone(),
        hostname,
        site: a.site.clone(),
        os: a.os.clone(),
        kernel: a.kernel.clone(),
        ring: a.labels.get("ring").cloned(),
        last_inventory_ms: a.record_written_at_ms,
        reporting: now.saturating_sub(a.record_written_at_ms) <= DAY_MS,
        bundle: e.map(|e| e.bundle.to_string()),
        bundle_age_days: e.map(|e| now.saturating_sub(e.bundle_created_at.0) / DAY_MS),
        open: open_by_due.values().sum(),
        open_by_due,
        oldest_overdue_days,
        last_patch,
        findings_checked: checked,
        findings_note: note,
    }
}

pub(super) fn finding_rows(
    a: &AssetBasis,
    hostname: &str,
    f: &FetchedFindings,
    since: u64,
    now: u64,
) -> Vec<FindingRow> {
    let mut rows = Vec::new();
    let open: BTreeMap<(&str, &str), &Assessed> = f
        .findings
        .iter()
        .filter(|x| x.finding.verdict.exposed())
        .map(|x| ((x.finding.cve.as_str(), x.finding.source.as_str()), x))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for h in &f.history {
        let closed_in = h.closed_at.is_some_and(|c| c.0 >= since && c.0 <= now);
        if h.closed_at.is_some() && !closed_in {
            continue;
        }
        seen.insert((h.cve.as_str(), h.source.as_str()));
        let status = match (h.closed_at, open.get(&(h.cve.as_str(), h.source.as_str()))) {
            (Some(_), _) => "closed",
            (None, Some(x)) if x.finding.excepted.is_some() => "excepted",
            (None, _) => "open",
        };
        rows.push(FindingRow {
            node: a.node.clone(),
            hostname: hostname.to_string(),
            cve: h.cve.clone(),
            source: h.source.clone(),
            binaries: h.binaries.clone(),
            installed: h.installed.clone(),
            fixed_version: h.fixed_version.clone(),
            status: status.into(),
            severity: severity_name(h.severity),
            kev: h.kev,
            due_class: due_name(h.due),
            first_seen_ms: h.first_seen.0,
            fix_available_since_ms: h.fix_seen_at.map(|m| m.0),
            due_at_ms: h.due_at.map(|m| m.0),
            remediated_at_ms: h.closed_at.map(|m| m.0),
            remediated_version: h.closed_version.clone(),
            remediation_days: h.remediation_ms().map(|ms| round1(ms as f64 / DAY_MS as f64)),
            sla_met: h.sla_met(patchmesh_protocol::ids::Millis(now)),
            exception: if status == "excepted" { h.excepted.clone() } else { None },
        });
    }
    // Open findings without a history entry (a node that predates history): first seen unknown,
    // reported from the assessment alone.
    for ((cve, source), x) in open {
        if seen.contains(&(cve, source)) {
            continue;
        }
        let fixed_version = match &x.finding.verdict {
            patchmesh_protocol::intel::matching::Verdict::Affected { fixed_version, .. } => {
                Some(fixed_version.clone())
            }
            _ => None,
        };
        rows.push(FindingRow {
            node: a.node.clone(),
            hostname: hostname.to_string(),
            cve: cve.to_string(),
            source: source.to_string(),
            binaries: x.finding.binaries.clone(),
            installed: x.finding.source_version.clone(),
            fixed_version,
            status: if x.finding.excepted.is_some() { "excepted" } else { "open" }.into(),
            severity: severity_name(x.risk.severity()),
            kev: x.info.as_ref().is_some_and(|i| i.kev.is_some()),
            due_class: due_name(x.risk.due),
            first_seen_ms: 0,
            fix_available_since_ms: x.finding.fix_seen_at.map(|m| m.0),
            due_at_ms: x.risk.due_at.map(|m| m.0),
            remediated_at_ms: None,
            remediated_version: None,
            remediation_days: None,
            sla_met: x.risk.due_at.map(|d| now <= d.0),
            exception: x.finding.excepted.as_ref().map(|e| e.key.clone()),
        });
    }
    rows
}

/// A rollout's row.
pub fn rollout_row(r: &crate::control::RolloutView) -> RolloutRow {
    use patchmesh_protocol::rollout::Control;
    let state = match &r.control {
        Some(Control::Halted { ring, failures }) => {
            format!("halted at ring {ring} after {failures} failure(s)")
        }
        Some(c) => format!("{c:?}").to_lowercase(),
        None => "unknown".into(),
    };
    let rings: Vec<(String, u32, u32, u32, u32)> = r
        .rings
        .iter()
        .map(|g| {
            (
                g.name.clone(),
                g.counts.targeted,
                g.counts.succeeded,
                g.counts.failed,
                g.counts.rolled_back,
            )
        })
        .collect();
    RolloutRow {
        id: r.id.clone(),
        patch: r.patch.as_ref().map_or_else(
            || "(patch not in catalog)".into(),
            |p| format!("{} {}", p.name, p.version),
        ),
        created_ms: r.created_at_ms,
        author: r.author.clone(),
        state,
        approvals: r.approvals,
        failed: rings.iter().map(|g| g.3).sum(),
        rolled_back: rings.iter().map(|g| g.4).sum(),
        rings,
        commands: r
            .commands
            .iter()
            .map(|c| (format!("{:?}", c.action).to_lowercase(), c.admin.clone(), c.issued_at_ms))
            .collect(),
    }
}
