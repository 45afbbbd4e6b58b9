//! A node's assessed findings, ranked, and the exposure summary its signed record carries.

use super::matching::{match_node, match_source, Finding, NodeIndex, Verdict};
use super::risk::{assess, Asset, Due, Risk};
use super::{CveInfo, Installed};
use crate::ids::{ContentId, Millis};
use crate::limits;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// A finding with its risk and the CVE's facts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assessed {
    /// The finding.
    pub finding: Finding,
    /// Its risk on this asset.
    pub risk: Risk,
    /// What the bundle knows about the CVE.
    pub info: Option<CveInfo>,
}

/// Ranking order: exposed findings before ones shown only for a disagreement, excepted ones
/// after open ones, unimportant ones last, then by score (highest first), due class, CVE and source.
pub fn rank_order(a: &Assessed, b: &Assessed) -> Ordering {
    (!a.finding.verdict.exposed(), a.finding.excepted.is_some(), a.risk.unimportant)
        .cmp(&(!b.finding.verdict.exposed(), b.finding.excepted.is_some(), b.risk.unimportant))
        .then_with(|| b.risk.score.partial_cmp(&a.risk.score).unwrap_or(Ordering::Equal))
        .then_with(|| a.risk.due.cmp(&b.risk.due))
        .then_with(|| a.finding.cve.cmp(&b.finding.cve))
        .then_with(|| a.finding.source.cmp(&b.finding.source))
}

/// Every finding on a node, assessed and ranked.
pub fn assess_node(index: &NodeIndex, installed: &[Installed], asset: &Asset) -> Vec<Assessed> {
    let mut out: Vec<Assessed> = match_node(index, installed)
        .into_iter()
        .map(|finding| {
            let info = index.cves.get(&finding.cve).cloned();
            let risk = assess(&finding, info.as_ref(), asset);
            Assessed { finding, risk, info }
        })
        .collect();
    out.sort_by(rank_order);
    out
}

/// Counts of exposed findings by due class, as a node record and a site summary carry them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DueCounts {
    /// Due within 3 days.
    pub days3: u32,
    /// Due within 14 days.
    pub days14: u32,
    /// Due within 60 days.
    pub days60: u32,
    /// Due at the next maintenance window.
    pub window: u32,
    /// No fix: an exception is needed.
    pub exception: u32,
}

impl DueCounts {
    /// Counts one finding.
    pub fn add(&mut self, due: Due) {
        let slot = match due {
            Due::Days3 => &mut self.days3,
            Due::Days14 => &mut self.days14,
            Due::Days60 => &mut self.days60,
            Due::NextWindow => &mut self.window,
            Due::ExceptionNeeded => &mut self.exception,
        };
        *slot = slot.saturating_add(1);
    }

    /// All counted.
    pub fn total(&self) -> u32 {
        self.days3
            .saturating_add(self.days14)
            .saturating_add(self.days60)
            .saturating_add(self.window)
            .saturating_add(self.exception)
    }
}

/// Findings by CVSS severity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeverityCounts {
    /// Critical (9.0–10.0).
    pub critical: u32,
    /// High (7.0–8.9).
    pub high: u32,
    /// Medium (4.0–6.9).
    pub medium: u32,
    /// Low (below 4.0).
    pub low: u32,
    /// No CVSS vector.
    pub unscored: u32,
}

impl SeverityCounts {
    fn add(&mut self, other: &SeverityCounts) {
        for (sum, add) in [
            (&mut self.critical, other.critical),
            (&mut self.high, other.high),
            (&mut self.medium, other.medium),
            (&mut self.low, other.low),
            (&mut self.unscored, other.unscored),
        ] {
            *sum = sum.saturating_add(add);
        }
    }
}

fn severity_counts<'a>(list: impl Iterator<Item = &'a Assessed>) -> SeverityCounts {
    let mut c = SeverityCounts::default();
    for a in list {
        let slot = match a.risk.severity() {
            super::risk::Severity::Critical => &mut c.critical,
            super::risk::Severity::High => &mut c.high,
            super::risk::Severity::Medium => &mut c.medium,
            super::risk::Severity::Low => &mut c.low,
            super::risk::Severity::Unscored => &mut c.unscored,
        };
        *slot = slot.saturating_add(1);
    }
    c
}

/// Counts of the exposed findings of an assessment (excepted ones not counted).
pub fn due_counts(list: &[Assessed]) -> DueCounts {
    let mut c = DueCounts::default();
    for a in list.iter().filter(|a| a.finding.verdict.exposed() && a.finding.excepted.is_none()) {
        c.add(a.risk.due);
    }
    c
}

/// One of a node's highest-ranked findings, as its record carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopFinding {
    /// The CVE.
    pub cve: String,
    /// The source package.
    pub source: String,
    /// Score × 10 (0–1000).
    pub score_tenths: u16,
    /// The due class.
    pub due: Due,
    /// The fixing version, when there is one.
    pub fixed_version: Option<String>,
    /// In the KEV catalog.
    pub kev: bool,
}

/// What a node's signed record says about its exposure: counts, the highest-ranked findings
/// and a digest of the full list, which the node serves on request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureSummary {
    /// The intel bundle the findings come from.
    pub bundle: ContentId,
    /// When that bundle was built (its age is `now - bundle_created_at`).
    pub bundle_created_at: Millis,
    /// Exposed findings by due class.
    pub counts: DueCounts,
    /// Exposed findings whose CVE is in KEV.
    pub kev: u32,
    /// Exposed findings an unexpired exception covers (not in `counts`).
    pub excepted: u32,
    /// Exposed findings (without an exception) by CVSS severity.
    pub severity: SeverityCounts,
    /// The highest-ranked exposed findings without an exception, best first.
    pub top: Vec<TopFinding>,
    /// BLAKE3 of the canonical encoding of the full finding list ([`findings_digest`]).
    pub findings_digest: [u8; 32],
}

impl ExposureSummary {
    /// Checks the bounds a peer's record must keep.
    pub fn within_limits(&self) -> bool {
        let field = |s: &str| s.len() <= limits::EXPOSURE_FIELD_BYTES_MAX;
        self.top.len() <= limits::EXPOSURE_TOP_PER_RECORD_MAX
            && self.top.iter().all(|t| {
                field(&t.cve)
                    && field(&t.source)
                    && t.fixed_version.as_deref().is_none_or(field)
                    && t.score_tenths <= 1000
            })
    }
}

/// The digest a record commits to: BLAKE3 over the canonical encoding of the findings (their
/// verdicts, versions and exceptions; not the risk, which a reader recomputes).
pub fn findings_digest(list: &[Assessed]) -> [u8; 32] {
    let findings: Vec<&Finding> = list.iter().map(|a| &a.finding).collect();
    crate::crypto::hash_parts(&[b"patchmesh/v1/findings", &crate::crypto::encode(&findings)])
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(limits::EXPOSURE_FIELD_BYTES_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A node's exposure summary from its ranked assessment.
pub fn exposure_summary(
    bundle: ContentId,
    bundle_created_at: Millis,
    list: &[Assessed],
) -> ExposureSummary {
    let exposed =
        || list.iter().filter(|a| a.finding.verdict.exposed() && a.finding.excepted.is_none());
    ExposureSummary {
        bundle,
        bundle_created_at,
        counts: due_counts(list),
        kev: exposed().filter(|a| a.risk.inputs.kev).count() as u32,
        excepted: list
            .iter()
            .filter(|a| a.finding.verdict.exposed() && a.finding.excepted.is_some())
            .count() as u32,
        severity: severity_counts(exposed()),
        top: exposed()
            .take(limits::EXPOSURE_TOP_PER_RECORD_MAX)
            .map(|a| TopFinding {
                cve: clip(&a.finding.cve),
                source: clip(&a.finding.source),
                score_tenths: (a.risk.score * 10.0).round().clamp(0.0, 1000.0) as u16,
                due: a.risk.due,
                fixed_version: match &a.finding.verdict {
                    Verdict::Affected { fixed_version, .. } => Some(clip(fixed_version)),
                    _ => None,
                },
                kev: a.risk.inputs.kev,
            })
            .collect(),
        findings_digest: findings_digest(list),
    }
}

/// One CVE among a site's highest-ranked, as its summary carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteCve {
    /// The CVE.
    pub cve: String,
    /// The source package it was found in (the first member's, by rank).
    pub source: String,
    /// Members listing it among their top findings.
    pub nodes: u32,
    /// The highest score × 10 among them.
    pub score_tenths: u16,
    /// The soonest due class among them.
    pub due: Due,
    /// A fixing version (the highest named).
    pub fixed_version: Option<String>,
    /// In the KEV catalog.
    pub kev: bool,
}

/// A site's exposure, computed from its members' records the same way by every member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteExposure {
    /// Members reporting an exposure summary, per intel bundle (the newest bundles when more
    /// than the limit are in use).
    pub bundles: BTreeMap<ContentId, (Millis, u32)>,
    /// Exposed findings by due class, summed over members.
    pub counts: DueCounts,
    /// Exposed KEV findings, summed.
    pub kev: u32,
    /// Excepted findings, summed.
    pub excepted: u32,
    /// Exposed findings by CVSS severity, summed.
    pub severity: SeverityCounts,
    /// Members with at least one exposed finding.
    pub nodes_exposed: u32,
    /// The highest-ranked CVEs from the members' top findings.
    pub top: Vec<SiteCve>,
}

impl SiteExposure {
    /// Checks the bounds a peer's summary must keep.
    pub fn within_limits(&self) -> bool {
        let field = |s: &str| s.len() <= limits::EXPOSURE_FIELD_BYTES_MAX;
        self.bundles.len() <= limits::EXPOSURE_BUNDLES_PER_SITE_MAX
            && self.top.len() <= limits::EXPOSURE_TOP_PER_SITE_MAX
            && self
                .top
                .iter()
                .all(|t| field(&t.cve) && t.fixed_version.as_deref().is_none_or(field))
    }
}

/// A site's exposure from its members' summaries.
pub fn site_exposure<'a>(members: impl IntoIterator<Item = &'a ExposureSummary>) -> SiteExposure {
    let mut out = SiteExposure::default();
    let mut bundles: BTreeMap<ContentId, (Millis, u32)> = BTreeMap::new();
    let mut cves: BTreeMap<&str, SiteCve> = BTreeMap::new();
    for e in members {
        let b = bundles.entry(e.bundle).or_insert((e.bundle_created_at, 0));
        b.1 += 1;
        for (sum, add) in [
            (&mut out.counts.days3, e.counts.days3),
            (&mut out.counts.days14, e.counts.days14),
            (&mut out.counts.days60, e.counts.days60),
            (&mut out.counts.window, e.counts.window),
            (&mut out.counts.exception, e.counts.exception),
        ] {
            *sum = sum.saturating_add(add);
        }
        out.kev = out.kev.saturating_add(e.kev);
        out.excepted = out.excepted.saturating_add(e.excepted);
        out.severity.add(&e.severity);
        out.nodes_exposed += u32::from(e.counts.total() > 0);
        let mut seen = BTreeSet::new();
        for t in &e.top {
            if !seen.insert(t.cve.as_str()) {
                continue;
            }
            let c = cves.entry(t.cve.as_str()).or_insert_with(|| SiteCve {
                cve: t.cve.clone(),
                source: t.source.clone(),
                nodes: 0,
                score_tenths: 0,
                due: t.due,
                fixed_version: None,
                kev: false,
            });
            c.nodes += 1;
            c.score_tenths = c.score_tenths.max(t.score_tenths);
            c.due = c.due.min(t.due);
            c.kev |= t.kev;
            if let Some(v) = &t.fixed_version {
                let higher = c.fixed_version.as_deref().is_none_or(|old| {
                    crate::rollout::target::compare_versions(v, old) == Ordering::Greater
                });
                if higher {
                    c.fixed_version = Some(v.clone());
                }
            }
        }
    }
    let mut newest: Vec<(ContentId, (Millis, u32))> = bundles.into_iter().collect();
    newest.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    newest.truncate(limits::EXPOSURE_BUNDLES_PER_SITE_MAX);
    out.bundles = newest.into_iter().collect();
    let mut top: Vec<SiteCve> = cves.into_values().collect();
    top.sort_by(|a, b| {
        b.score_tenths
            .cmp(&a.score_tenths)
            .then(a.due.cmp(&b.due))
            .then(b.nodes.cmp(&a.nodes))
            .then(a.cve.cmp(&b.cve))
    });
    top.truncate(limits::EXPOSURE_TOP_PER_SITE_MAX);
    out.top = top;
    out
}

/// The distinct (source package, source version) pairs of a fleet, each with a dense id. A
/// fleet view interns a node's inventory once when it arrives; ranking then reads ids, never
/// strings.
#[derive(Debug, Default)]
pub struct SourceVersions {
    ids: rustc_hash::FxHashMap<String, rustc_hash::FxHashMap<String, u32>>,
    list: Vec<(String, String)>,
}

impl SourceVersions {
    /// The ids of an inventory's source versions, sorted and without repeats (several binaries
    /// of one source count once).
    pub fn intern<'a>(&mut self, installed: impl IntoIterator<Item = &'a Installed>) -> Vec<u32> {
        let mut out: Vec<u32> = installed
            .into_iter()
            .map(|p| {
                if let Some(id) =
                    self.ids.get(p.source.as_str()).and_then(|v| v.get(p.source_version.as_str()))
                {
                    return *id;
                }
                let id = self.list.len() as u32;
                self.list.push((p.source.clone(), p.source_version.clone()));
                self.ids.entry(p.source.clone()).or_default().insert(p.source_version.clone(), id);
                id
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Distinct pairs interned.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Nothing interned yet.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// One node as the fleet view sees it.
#[derive(Clone, Copy, Debug)]
pub struct FleetNode<'a> {
    /// Its site.
    pub site: &'a str,
    /// Its asset labels.
    pub asset: Asset,
    /// Its source versions, interned by [`SourceVersions::intern`].
    pub packages: &'a [u32],
}

/// One CVE across the fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetCve {
    /// The CVE.
    pub cve: String,
    /// Nodes exposed to it.
    pub nodes: u32,
    /// Exposed nodes per site.
    pub sites: BTreeMap<String, u32>,
    /// The highest score on any of them.
    pub max_score: f64,
    /// The soonest due class on any of them.
    pub due: Due,
    /// Source packages it is found in.
    pub sources: BTreeSet<String>,
    /// Versions that fix it (empty: no fix yet).
    pub fixed_versions: BTreeSet<String>,
    /// In the KEV catalog.
    pub kev: bool,
}

/// Asset classes: three exposures × four criticalities.
const ASSET_CLASSES: usize = 12;

fn asset_class(a: &Asset) -> usize {
    let e = match a.exposure {
        super::risk::Exposure::Internet => 0,
        super::risk::Exposure::Internal => 1,
        super::risk::Exposure::Isolated => 2,
    };
    e * 4 + usize::from(a.criticality.clamp(1, 4) - 1)
}

fn class_asset(c: usize) -> Asset {
    let exposure = match c / 4 {
        0 => super::risk::Exposure::Internet,
        1 => super::risk::Exposure::Internal,
        _ => super::risk::Exposure::Isolated,
    };
    Asset { exposure, criticality: (c % 4) as u8 + 1 }
}

/// One exposed finding of one (source, version), assessed for every asset class.
struct Scored {
    cve: u32,
    by_class: [(f64, Due); ASSET_CLASSES],
}

/// What the per-node walk updates for one CVE: kept together so one finding touches one
/// cache line.
#[derive(Clone, Copy)]
struct Count {
    last_node: u32,
    nodes: u32,
    site_nodes: u32,
}

/// Per-CVE facts, indexed by interned CVE id.
#[derive(Default)]
struct Tallies {
    names: Vec<String>,
    ids: rustc_hash::FxHashMap<String, u32>,
    counts: Vec<Count>,
    kev: Vec<bool>,
    sources: Vec<BTreeSet<String>>,
    fixed: Vec<BTreeSet<String>>,
    sites: Vec<Vec<(usize, u32)>>,
}

impl Tallies {
    fn id(&mut self, cve: &str) -> u32 {
        if let Some(id) = self.ids.get(cve) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(cve.to_string(), id);
        self.names.push(cve.to_string());
        self.counts.push(Count { last_node: u32::MAX, nodes: 0, site_nodes: 0 });
        self.kev.push(false);
        self.sources.push(BTreeSet::new());
        self.fixed.push(BTreeSet::new());
        self.sites.push(Vec::new());
        id
    }

    /// Moves the per-site counters of the CVEs `touched` into their site lists.
    fn flush_site(&mut self, touched: &mut Vec<u32>, site: usize) {
        for &c in touched.iter() {
            let count = &mut self.counts[c as usize];
            self.sites[c as usize].push((site, count.site_nodes));
            count.site_nodes = 0;
        }
        touched.clear();
    }
}

/// Every exposed CVE of a fleet of one release, ranked by the highest score on any node.
///
/// Each distinct (source, source version) is matched and assessed once — for all twelve asset
/// classes — whatever the number of nodes that have it. A node then costs one array read per
/// source version, one bit for its asset class, and one counter update per finding; scores and due classes are read at the end from the classes each (source,
/// version) was seen with. Nodes are walked site by site so per-site counts are dense counters.
pub fn rank_fleet(
    index: &NodeIndex,
    versions: &SourceVersions,
    nodes: &[FleetNode<'_>],
) -> Vec<FleetCve> {
    let mut t = Tallies::default();
    let mut sv_found: Vec<Option<Vec<Scored>>> = Vec::new();
    sv_found.resize_with(versions.len(), || None);
    let mut sv_classes: Vec<u16> = vec![0; versions.len()];
    let mut site_names: Vec<&str> = Vec::new();
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| nodes[i].site);
    let mut touched: Vec<u32> = Vec::new();
    for (pos, &n) in order.iter().enumerate() {
        let node = &nodes[n];
        let n = n as u32;
        if pos == 0 || nodes[order[pos - 1]].site != node.site {
            if pos > 0 {
                t.flush_site(&mut touched, site_names.len() - 1);
            }
            site_names.push(node.site);
        }
        let class_bit = 1u16 << asset_class(&node.asset);
        for &id in node.packages {
            let id = id as usize;
            let Some(slot) = sv_found.get_mut(id) else { continue };
            let found = match slot {
                Some(found) => found,
                None => {
                    let (source, version) = &versions.list[id];
                    slot.insert(score_source(index, &mut t, (source, version)))
                }
            };
            sv_classes[id] |= class_bit;
            for s in found.iter() {
                let count = &mut t.counts[s.cve as usize];
                if count.last_node != n {
                    count.last_node = n;
                    count.nodes += 1;
                    if count.site_nodes == 0 {
                        touched.push(s.cve);
                    }
                    count.site_nodes += 1;
                }
            }
        }
    }
    if !site_names.is_empty() {
        t.flush_site(&mut touched, site_names.len() - 1);
    }
    let mut best: Vec<(f64, Due)> = vec![(0.0, Due::ExceptionNeeded); t.names.len()];
    for (found, classes) in sv_found.iter().zip(&sv_classes) {
        for s in found.iter().flatten() {
            let b = &mut best[s.cve as usize];
            for (k, (score, due)) in s.by_class.iter().enumerate() {
                if classes & (1 << k) != 0 {
                    b.0 = b.0.max(*score);
                    b.1 = b.1.min(*due);
                }
            }
        }
    }
    let mut out: Vec<FleetCve> = (0..t.names.len())
        .filter(|&c| t.counts[c].nodes > 0)
        .map(|c| FleetCve {
            cve: t.names[c].clone(),
            nodes: t.counts[c].nodes,
            sites: t.sites[c].iter().map(|(s, k)| (site_names[*s].to_string(), *k)).collect(),
            max_score: best[c].0,
            due: best[c].1,
            sources: std::mem::take(&mut t.sources[c]),
            fixed_versions: std::mem::take(&mut t.fixed[c]),
            kev: t.kev[c],
        })
        .collect();
    out.sort_by(|a, b| {
        b.max_score
            .partial_cmp(&a.max_score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| a.due.cmp(&b.due))
            .then_with(|| b.nodes.cmp(&a.nodes))
            .then_with(|| a.cve.cmp(&b.cve))
    });
    out
}

/// Matches one (source, version) and assesses its exposed findings for every asset class.
fn score_source(
    index: &NodeIndex,
    t: &mut Tallies,
    (source, version): (&str, &str),
) -> Vec<Scored> {
    let Some(advisories) = index.advisories.get(source) else { return Vec::new() };
    let mut out = Vec::new();
    for f in match_source(source, version, advisories).into_iter().filter(|f| f.verdict.exposed()) {
        let c = t.id(&f.cve);
        let risk = super::risk::assess(&f, index.cves.get(&f.cve), &class_asset(0));
        let fix = match &f.verdict {
            Verdict::Affected { fixed_version, .. } => Some(fixed_version.clone()),
            _ => None,
        };
        let by_class = std::array::from_fn(|k| risk.on(&class_asset(k), fix.is_some()));
        t.kev[c as usize] |= risk.inputs.kev;
        t.sources[c as usize].insert(f.source.clone());
        if let Some(v) = fix {
            t.fixed[c as usize].insert(v);
        }
        out.push(Scored { cve: c, by_class });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intel::risk::Exposure;
    use crate::intel::{Advisory, Origin, Statement, TrackerStatus, Urgency};

    fn adv(cve: &str, fixed: &str) -> Advisory {
        Advisory {
            cve: cve.into(),
            origin: Origin::Tracker,
            statement: Statement::Tracker {
                status: TrackerStatus::Resolved,
                fixed_version: Some(fixed.into()),
                urgency: Urgency::High,
                nodsa: None,
                fixed_in_security: false,
            },
            fix_seen_at: None,
        }
    }

    #[test]
    fn the_fleet_view_counts_each_node_once_per_cve_by_site() {
        let mut index = NodeIndex { release: "bookworm".into(), ..Default::default() };
        // CVE-1 hits two sources; a node with both counts once.
        index.advisories.insert("gcc-12".into(), vec![adv("CVE-1", "12.2-2")]);
        index
            .advisories
            .insert("gcc-13".into(), vec![adv("CVE-1", "13.1-2"), adv("CVE-2", "13.2-1")]);
        let p = |bin: &str, src: &str, v: &str| Installed::from_dpkg(bin, "amd64", v, Some(src));
        let a = [
            p("cpp-12", "gcc-12", "12.2-1"),
            p("gcc-12", "gcc-12", "12.2-1"),
            p("cpp-13", "gcc-13", "13.1-1"),
        ];
        let b = [p("cpp-13", "gcc-13", "13.1-2")];
        let c = [p("cpp-12", "gcc-12", "12.2-2")];
        let mut versions = SourceVersions::default();
        let (ia, ib, ic) = (versions.intern(&a), versions.intern(&b), versions.intern(&c));
        assert_eq!(ia.len(), 2, "two binaries of one source version intern once");
        let internet = Asset { exposure: Exposure::Internet, criticality: 4 };
        let nodes = [
            FleetNode { site: "paris", asset: Asset::default(), packages: &ia },
            FleetNode { site: "lyon", asset: internet, packages: &ib },
            FleetNode { site: "paris", asset: internet, packages: &ic },
        ];
        let ranked = rank_fleet(&index, &versions, &nodes);
        let one = ranked.iter().find(|c| c.cve == "CVE-1").unwrap();
        assert_eq!(one.nodes, 1);
        assert_eq!(one.sites, BTreeMap::from([("paris".to_string(), 1)]));
        assert_eq!(
            one.fixed_versions,
            BTreeSet::from(["12.2-2".to_string(), "13.1-2".to_string()])
        );
        let two = &ranked[0];
        assert_eq!(two.cve, "CVE-2", "ranked by the highest score on any node");
        assert_eq!(two.nodes, 2);
        assert_eq!(two.sites, BTreeMap::from([("lyon".to_string(), 1), ("paris".to_string(), 1)]));
        // Highest on the internet-facing, criticality-4 node: 100 × 0.2 × 0.8 × 1.0.
        assert_eq!(two.max_score, 16.0);
        assert_eq!(ranked.len(), 2);
    }
}
