//! A node's assessed findings, ranked, and the exposure summary its signed record carries.

use super::matching::{match_node, Finding, NodeIndex};
use super::risk::{assess, Asset, Due, Risk};
use super::{CveInfo, Installed};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

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

/// Ranking order: exposed findings before ones shown only for a disagreement, unimportant
/// ones last, then by score (highest first), due class, CVE and source.
pub fn rank_order(a: &Assessed, b: &Assessed) -> Ordering {
    (!a.finding.verdict.exposed(), a.risk.unimportant)
        .cmp(&(!b.finding.verdict.exposed(), b.risk.unimportant))
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

/// Counts of the exposed findings of an assessment.
pub fn due_counts(list: &[Assessed]) -> DueCounts {
    let mut c = DueCounts::default();
    for a in list.iter().filter(|a| a.finding.verdict.exposed()) {
        c.add(a.risk.due);
    }
    c
}
