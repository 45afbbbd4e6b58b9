//! Measurement and the report of a run.

use super::*;

/// What a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Honest nodes.
    pub nodes: usize,
    /// Sites.
    pub sites: usize,
    /// Adversarial nodes.
    pub adversaries: usize,
    /// The seed.
    pub seed: u64,
    /// Hash of the ordered event trace.
    pub trace_hash: String,
    /// All live nodes hold the same catalog and admin set, and each site's live nodes the same
    /// site state.
    pub state_converged: bool,
    /// Publish → each node holds it, simulated milliseconds.
    pub policy_convergence_ms: Percentiles,
    /// Nodes whose convergence time was measured (live from publish to receipt).
    pub policy_convergence_nodes: usize,
    /// Catalog-carrying bytes on the wire per node for the measured change.
    pub sync_bytes_per_change: f64,
    /// Anti-entropy and gossip bytes per node per simulated second once warm (digests etc.).
    pub background_bytes_per_node_per_s: f64,
    /// All bytes sent.
    pub bytes_sent_total: u64,
    /// Messages delivered.
    pub messages_delivered: u64,
    /// Messages lost to link loss, partitions or crashed receivers.
    pub messages_lost: u64,
    /// Messages delivered, by kind.
    pub messages_by_kind: BTreeMap<String, u64>,
    /// Objects refused by honest nodes, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Site summaries held per node (mean), and records held per node (mean).
    pub summaries_per_node: f64,
    /// Records held per node (mean): the site, not the fleet.
    pub records_per_node: f64,
    /// Invariant violations; empty when all hold.
    pub invariant_violations: Vec<String>,
    /// Simulated time.
    pub simulated_ms: u64,
    /// Wall-clock time of the run.
    pub wall_ms: u64,
    /// Peak resident set size of the process.
    pub peak_rss_mb: u64,
    /// Max over sites of payload bytes entering the site over the WAN (with `Have` replies)
    /// divided by the payload size; 0 without a payload.
    pub wan_bytes_per_site_ratio: f64,
    /// Publication → each node holds the whole payload verified, simulated milliseconds, over
    /// nodes live at the end.
    pub payload_complete_ms: Percentiles,
    /// Nodes counted in `payload_complete_ms`.
    pub payload_complete_nodes: usize,
    /// Times a downloading node took over its site's WAN fetch because the elected member
    /// was seen gone.
    pub payload_failovers: usize,
    /// Peers penalised by honest downloads (any is also a violation: an honest fleet has no
    /// one to penalise; congestion is never an offence).
    pub payload_penalties: u32,
    /// Payload bytes that left the origin's site over the WAN, in copies of the payload: the
    /// sites fetching should take most of it from each other (0 without a payload).
    pub payload_origin_copies: f64,
    /// Links two nodes dialled again after dropping each other (a hello lost on a lossy
    /// link): the simulator redials as endpoints do.
    pub links_redialled: u64,
    /// Rollout figures (blast radius, halt latency, completion), present with a `[rollout]`.
    #[serde(flatten)]
    pub rollout: Option<RolloutFigures>,
    /// Intel figures (exposure visibility), present with an `[intel]`.
    #[serde(flatten)]
    pub intel: Option<crate::intel::IntelFigures>,
    /// Enrolment figures, present with an `[enrol]`.
    #[serde(flatten)]
    pub enrol: Option<crate::enrol::EnrolFigures>,
    /// What the nodes judged of their reach into the mesh under cuts and eclipses.
    #[serde(flatten)]
    pub reach: super::reach::ReachFigures,
}

/// What the live honest nodes hold at the end.
struct NodeStates {
    /// (catalog state, trust version) → nodes holding it.
    catalogs: BTreeMap<(StateHash, u64), usize>,
    /// Per site, the site states its members hold.
    sites: BTreeMap<u32, BTreeSet<StateHash>>,
    /// Refusals by kind, over all nodes.
    rejected: BTreeMap<String, u64>,
    summaries: usize,
    records: usize,
    live: usize,
}

impl World {
    /// Walks every live honest node: what it holds (for convergence) and what it must never
    /// have accepted (forged changes and records, unsigned admin sets).
    fn node_states(&mut self, violations: &mut Vec<String>) -> NodeStates {
        // Convergence: every live honest node agrees on catalog and trust; each site on its state.
        let mut catalogs: BTreeMap<(StateHash, u64), usize> = BTreeMap::new();
        let mut sites: BTreeMap<u32, BTreeSet<StateHash>> = BTreeMap::new();
        let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
        let (mut summaries, mut records, mut live) = (0usize, 0usize, 0usize);
        for i in 0..self.s.nodes {
            let site = self.ents[i].site;
            let Some(n) = self.ents[i].node.as_mut() else { continue };
            live += 1;
            *catalogs.entry((n.catalog().state_hash(), n.trust().version())).or_default() += 1;
            sites.entry(site).or_default().insert(n.state_hash());
            summaries += n.summaries().all().len();
            records += n.site().records().len();
            for (k, v) in &n.stats().rejected {
                *rejected.entry(k.to_string()).or_default() += v;
            }
            for h in &self.forged.change_hashes {
                if n.catalog().has(h) {
                    violations.push(format!("node {i} stored a forged catalog change"));
                }
            }
            let admins = n.trust().admins();
            if admins.admins.len() != 1 && self.s.revoke_admin_at_ms > 0 {
                violations.push(format!("node {i} holds admin set {:?}", admins.admins.len()));
            }
            if n.trust().version() > 2 {
                violations.push(format!("node {i} accepted an admin set no root quorum signed"));
            }
        }
        for (v, max) in &self.forged.records {
            if let Some(n) =
                self.ents.iter().filter(|e| !e.adversary).filter_map(|e| e.node.as_ref()).find(
                    |n| {
                        n.site()
                            .record_version(&NodeId(self.ents[*v as usize].config.key.public().0))
                            >= Some(*max)
                    },
                )
            {
                violations.push(format!("node {:?} stored a forged record", n.id()));
            }
        }
        NodeStates { catalogs, sites, rejected, summaries, records, live }
    }

    /// The rollout model's figures from every live honest node's journal and verdict.
    fn rollout_figures(&mut self, violations: &mut Vec<String>) -> Option<RolloutFigures> {
        self.rollout.take().map(|m| {
            let id = m.id();
            let live: Vec<_> = self.ents[..self.s.nodes]
                .iter()
                .map(|e| {
                    e.node.as_ref().map(|n| {
                        let engine = n.rollouts();
                        (
                            engine.journal().get(&id).cloned(),
                            engine.verdicts().get(&id).map(|v| v.control.clone()),
                        )
                    })
                })
                .collect();
            let (figures, v) = m.finish(&live, self.now_us);
            violations.extend(v);
            figures
        })
    }

    pub(super) fn finish(mut self) -> Report {
        let mut violations = std::mem::take(&mut self.violations);
        let NodeStates { catalogs, sites, rejected, summaries, records, live } =
            self.node_states(&mut violations);
        let converged = catalogs.len() == 1 && sites.values().all(|s| s.len() == 1);
        if !converged {
            violations.push(format!(
                "not converged: {} catalog/trust states, {} sites disagree",
                catalogs.len(),
                sites.values().filter(|s| s.len() > 1).count()
            ));
        }
        let times: Vec<u64> = self
            .received_us
            .iter()
            .zip(&self.eligible)
            .filter(|(t, e)| **e && **t != u64::MAX)
            .map(|(t, _)| (t - self.measured_at_us) / 1000)
            .collect();
        if self.measured_hash.is_some() && self.pending_measure > 0 {
            violations
                .push(format!("{} nodes never received the measured change", self.pending_measure));
        }
        if self.s.adversaries > 0 && rejected.is_empty() {
            violations.push("adversaries attacked but no node refused anything".into());
        }
        let _ = self.rejected_adversary_free;
        let figures = self.payload.as_ref().map(|p| p.finish(self.now_us)).unwrap_or_default();
        violations.extend(figures.violations);
        let rollout = self.rollout_figures(&mut violations);
        let intel = self.intel.take().map(|m| {
            let live: Vec<bool> =
                self.ents[..self.s.nodes].iter().map(|e| e.node.is_some()).collect();
            m.finish(&live, &mut violations)
        });
        let enrol = self.enrol.take().map(|m| m.finish(&mut violations));
        let cuts: Vec<(Vec<u32>, u64, u64)> = self
            .s
            .partition
            .iter()
            .zip(&self.partition_sites)
            .map(|(p, sites)| (sites.clone(), p.start_ms * 1000, p.end_ms * 1000))
            .collect();
        let site_of: Vec<u32> = self.ents[..self.s.nodes].iter().map(|e| e.site).collect();
        let mut wan = vec![BTreeSet::new(); self.s.sites];
        for (i, e) in self.ents[..self.s.nodes].iter().enumerate() {
            for j in &e.links {
                let other = self.ents[*j as usize].site;
                if other != site_of[i] {
                    wan[site_of[i] as usize].insert(other);
                }
            }
        }
        let reach = self.reach.finish(&cuts, &site_of, &wan);
        let nodes = self.s.nodes.max(1) as f64;
        let bg_s = (self.background_to_us.saturating_sub(self.background_from_us)) as f64 / 1e6;
        let report = Report {
            scenario: self.s.name.clone(),
            nodes: self.s.nodes,
            sites: self.s.sites,
            adversaries: self.s.adversaries,
            seed: self.seed,
            trace_hash: self.trace.finalize().to_hex().to_string(),
            state_converged: converged,
            policy_convergence_nodes: times.len(),
            policy_convergence_ms: Percentiles::of(times),
            sync_bytes_per_change: (self.catalog_bytes as f64 / nodes * 10.0).round() / 10.0,
            background_bytes_per_node_per_s: if bg_s > 0.0 {
                (self.background_bytes as f64 / nodes / bg_s).round()
            } else {
                0.0
            },
            bytes_sent_total: self.bytes_total,
            messages_delivered: self.delivered,
            messages_lost: self.lost,
            messages_by_kind: self.by_kind.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            rejected,
            summaries_per_node: (summaries as f64 / live.max(1) as f64 * 10.0).round() / 10.0,
            records_per_node: (records as f64 / live.max(1) as f64 * 10.0).round() / 10.0,
            invariant_violations: violations,
            simulated_ms: self.now_us / 1000,
            // Everything from building the world to this report: keys, topology, run, checks.
            wall_ms: self.started.elapsed().as_millis() as u64,
            peak_rss_mb: peak_rss_mb(),
            wan_bytes_per_site_ratio: figures.wan_bytes_per_site_ratio,
            payload_complete_ms: figures.complete_ms,
            payload_complete_nodes: figures.complete_nodes,
            payload_failovers: figures.failovers,
            payload_penalties: figures.penalties,
            payload_origin_copies: figures.origin_copies,
            links_redialled: self.redialled,
            rollout,
            intel,
            enrol,
            reach,
        };
        // Freeing a 100,000-node world takes seconds and the report is all that is left to use.
        std::mem::forget(self.ents);
        report
    }
}

/// Peak resident set size (VmHWM) of this process in MiB; 0 where /proc is not available.
pub fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
