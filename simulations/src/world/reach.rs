//! Measurement of the nodes' reach into the mesh (`protocol::node::Reach`): when nodes of a
//! cut or eclipsed site noticed and held new installs, when they were back, and whether any
//! node that was never cut held installs for nothing.

use crate::stats::Percentiles;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Each honest node's changes of "holds installs" (behind or cut off), in order.
#[derive(Debug, Default)]
pub(crate) struct ReachLog {
    changes: BTreeMap<u32, Vec<(u64, bool)>>,
    crashed: BTreeSet<u32>,
}

impl ReachLog {
    /// Node `node` judged its reach at `t_us`; `holds` whether it holds installs now.
    pub(crate) fn note(&mut self, node: u32, t_us: u64, holds: bool) {
        let v = self.changes.entry(node).or_default();
        if v.last().map(|(_, h)| *h) != Some(holds) {
            v.push((t_us, holds));
        }
    }

    /// `node` crashed (a restarted node may be behind for good reason).
    pub(crate) fn crashed(&mut self, node: u32) {
        self.crashed.insert(node);
    }

    /// Figures for `cuts` (sites, start, end in µs, as the scenario's `[[partition]]`s), over
    /// the honest nodes whose sites are `site_of`; `wan[s]` holds the sites site `s` has WAN
    /// links to (a site whose every WAN link goes into a cut is cut with it).
    pub(crate) fn finish(
        &self,
        cuts: &[(Vec<u32>, u64, u64)],
        site_of: &[u32],
        wan: &[BTreeSet<u32>],
    ) -> ReachFigures {
        let mut f = ReachFigures::default();
        let mut ever_cut = BTreeSet::new();
        for (sites, start, end) in cuts {
            let mut c = CutReach::default();
            let (mut detect, mut back) = (Vec::new(), Vec::new());
            for (node, site) in site_of.iter().enumerate() {
                if !sites.contains(site) {
                    continue;
                }
                let node = node as u32;
                ever_cut.insert(node);
                c.nodes += 1;
                let changes = self.changes.get(&node).map_or(&[][..], Vec::as_slice);
                let held = changes.iter().find(|(t, h)| *h && *t >= *start && *t <= *end);
                if let Some((t, _)) = held {
                    c.held_nodes += 1;
                    detect.push((t - start) / 1000);
                    match changes.iter().find(|(t, h)| !*h && *t >= *end) {
                        Some((t, _)) => back.push((t - end) / 1000),
                        None => c.still_held_nodes += 1,
                    }
                }
            }
            c.detect_ms = Percentiles::of(detect);
            c.back_ms = Percentiles::of(back);
            f.reach_by_cut.push(c);
        }
        let cut_sites: BTreeSet<u32> = cuts.iter().flat_map(|c| c.0.iter().copied()).collect();
        let collateral = |site: u32| {
            !cut_sites.contains(&site)
                && wan.get(site as usize).is_some_and(|w| !w.is_empty() && w.is_subset(&cut_sites))
        };
        for (n, v) in &self.changes {
            if ever_cut.contains(n) || self.crashed.contains(n) || !v.iter().any(|(_, h)| *h) {
                continue;
            }
            if site_of.get(*n as usize).is_some_and(|s| collateral(*s)) {
                f.reach_collateral_holds += 1;
            } else {
                f.reach_false_holds += 1;
            }
        }
        f
    }
}

/// What the nodes judged of their reach (flattened into the report).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReachFigures {
    /// Per `[[partition]]` (a cut, or an eclipse that forwards some kinds).
    pub reach_by_cut: Vec<CutReach>,
    /// Honest nodes never cut off and never crashed that held new installs at some point: a
    /// false alarm (it costs an install delay); 0 in every scenario. Nodes of a site whose
    /// every WAN link goes into a cut are cut with it, and counted apart:
    pub reach_false_holds: usize,
    /// Nodes outside the cuts that held, in sites whose every WAN link goes into a cut.
    pub reach_collateral_holds: usize,
}

/// How the nodes of one cut's sites judged their reach.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CutReach {
    /// Honest nodes in the cut sites.
    pub nodes: usize,
    /// Of those, nodes that reported behind or cut off (and held new installs) during the cut.
    pub held_nodes: usize,
    /// Cut start → the node held new installs.
    pub detect_ms: Percentiles,
    /// Heal → the node stopped holding.
    pub back_ms: Percentiles,
    /// Nodes that held during the cut and still held at the end.
    pub still_held_nodes: usize,
}
