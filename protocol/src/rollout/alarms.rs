//! Failure reports, held fleet-wide.
//!
//! Success evidence stays in its site and travels as summary counts; failure evidence is what
//! halts a rollout, so every node must hold it to reach the halt verdict on its own. A failure
//! report is an ordinary signed [`Evidence`] of kind `InstallFailed`, carried with its author's
//! admission certificate, and it floods to every node (not only the author's site). Each node
//! keeps the first report per (rollout, node): a node cannot fail twice in the count, and a
//! malicious node adds at most one failure. The set only grows, so every node converges to the
//! same set, and the same verdict. A halt needs only a handful of failures, so the per-rollout
//! cap ([`limits::ALARMS_PER_ROLLOUT_MAX`]) is far above anything a gate reads.

use crate::crypto::{hash_parts, SignatureCheck};
use crate::ids::{Millis, NodeId, ObjectId, RolloutId, StateHash};
use crate::limits;
use crate::site::{self, Bundle, Evidence, EvidenceKind, Merge, SiteError};
use crate::trust::Trust;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One node's failure report of one rollout.
#[derive(Clone, Debug)]
pub struct Alarm {
    /// The report.
    pub evidence: Evidence,
    /// Labels of the reporting node's certificate (for its ring).
    pub labels: BTreeMap<String, String>,
    /// The signed bundle, as relayed.
    pub bundle: Arc<Bundle>,
}

/// Failure reports of every rollout, from every site.
#[derive(Debug, Default)]
pub struct Alarms {
    by_rollout: BTreeMap<RolloutId, BTreeMap<NodeId, Alarm>>,
    /// Per rollout, the failing nodes in the order their reports were merged.
    arrivals: BTreeMap<RolloutId, Vec<NodeId>>,
    digest: Option<StateHash>,
}

impl Alarms {
    /// Verifies a failure report completely. Stores nothing.
    pub fn verify(
        bundle: &Arc<Bundle>,
        trust: &Trust,
        now: Millis,
        check: &dyn SignatureCheck,
    ) -> Result<Alarm, SiteError> {
        let (evidence, labels) = site::verify_evidence_labels(bundle, trust, now, check)?;
        if evidence.kind != EvidenceKind::InstallFailed {
            return Err(SiteError::Invalid("only install failures travel fleet-wide"));
        }
        Ok(Alarm { evidence, labels, bundle: bundle.clone() })
    }

    /// Adds a verified report; the first report of a node for a rollout is the one kept.
    pub fn merge(&mut self, alarm: Alarm) -> Result<Merge, SiteError> {
        let rollout = alarm.evidence.rollout;
        if !self.by_rollout.contains_key(&rollout)
            && self.by_rollout.len() >= limits::ALARM_ROLLOUTS_MAX
        {
            return Err(SiteError::Full("alarm rollouts"));
        }
        let nodes = self.by_rollout.entry(rollout).or_default();
        if nodes.contains_key(&alarm.evidence.node) {
            return Ok(Merge::Duplicate);
        }
        if nodes.len() >= limits::ALARMS_PER_ROLLOUT_MAX {
            return Err(SiteError::Full("alarms of one rollout"));
        }
        self.arrivals.entry(rollout).or_default().push(alarm.evidence.node);
        nodes.insert(alarm.evidence.node, alarm);
        self.digest = None;
        Ok(Merge::New)
    }

    /// True if this exact report (by object id) or another report by the same node for the
    /// same rollout is held.
    pub fn holds(&self, rollout: &RolloutId, node: &NodeId) -> bool {
        self.by_rollout.get(rollout).is_some_and(|n| n.contains_key(node))
    }

    /// The report held of `node` for `rollout`.
    pub fn get(&self, rollout: &RolloutId, node: &NodeId) -> Option<&Alarm> {
        self.by_rollout.get(rollout)?.get(node)
    }

    /// How many reports of a rollout are held (they only grow while the node runs).
    pub fn count_of(&self, rollout: &RolloutId) -> usize {
        self.by_rollout.get(rollout).map_or(0, BTreeMap::len)
    }

    /// The reports of a rollout merged after its first `skip`, in the order they were merged.
    pub fn arrived_after(&self, rollout: &RolloutId, skip: usize) -> impl Iterator<Item = &Alarm> {
        let nodes = self.by_rollout.get(rollout);
        let order = self.arrivals.get(rollout).map_or(&[][..], |a| a.get(skip..).unwrap_or(&[]));
        order.iter().filter_map(move |n| nodes.and_then(|m| m.get(n)))
    }

    /// The reports of a rollout, by failing node.
    pub fn of(&self, rollout: &RolloutId) -> impl Iterator<Item = &Alarm> {
        self.by_rollout.get(rollout).into_iter().flat_map(|n| n.values())
    }

    /// Every report held (for anti-entropy), at most `max`, skipping ids in `skip` (sorted).
    pub fn bundles_except(&self, skip: &[ObjectId], max: usize) -> Vec<Arc<Bundle>> {
        self.by_rollout
            .values()
            .flat_map(|n| n.values())
            .filter(|a| skip.binary_search(&a.bundle.id()).is_err())
            .map(|a| a.bundle.clone())
            .take(max)
            .collect()
    }

    /// Ids of every report held, sorted.
    pub fn ids(&self) -> Vec<ObjectId> {
        let mut ids: Vec<ObjectId> =
            self.by_rollout.values().flat_map(|n| n.values()).map(|a| a.bundle.id()).collect();
        ids.sort_unstable();
        ids
    }

    /// Number of reports held.
    pub fn len(&self) -> usize {
        self.by_rollout.values().map(BTreeMap::len).sum()
    }

    /// True if no report is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hash over the ids held: equal on two nodes iff they hold the same reports.
    pub fn digest(&mut self) -> StateHash {
        if let Some(d) = self.digest {
            return d;
        }
        let ids = self.ids();
        let parts: Vec<&[u8]> = ids.iter().map(|i| i.0.as_slice()).collect();
        let d = StateHash(hash_parts(&parts));
        self.digest = Some(d);
        d
    }
}
