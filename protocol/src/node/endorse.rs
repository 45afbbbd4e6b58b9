//! Endorsing this site's summaries (see "Endorsed summaries" in [`crate::site`]).
//!
//! The reporter's summary of a site of several members is a *proposal*: it counts nowhere until
//! another member endorses it. The reporter hands it to one member of its site it is connected
//! to (the one the election ranks first among them) and, if no endorsement has come back after
//! an anti-entropy period, to the next, and so on round them all (each further round waiting
//! twice as long): one direct message per summary in the usual case, and one member down or
//! behind does not stall the site. The endorsed summary goes on to everyone like any summary
//! (in direct relay mode also straight back to the author, which otherwise might hear of it
//! only at the next anti-entropy round and ask someone else meanwhile). A member
//! handed a proposal by its author checks it against its own records
//! ([`SiteState::supports`]: it claims nothing those records do not show) at once and again
//! whenever its records change, and endorses it as soon as they support it. The endorsed
//! summary then travels like any summary. Proposals are never relayed: one that reached a node
//! other than from its author is ignored.

use crate::ids::{Millis, NodeId, StateHash};
use crate::node::PeerId;
use crate::site::{self, Bundle, HeldSummary, SiteState, SummaryRank};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Proposals of other members held at once, by distinct authors: a member that floods
/// proposals only ever replaces its own, and the authors the election ranks first are kept.
pub(crate) const PROPOSALS_MAX: usize = 4;

/// Another member's proposal, handed to this node.
struct Held {
    bundle: Arc<Bundle>,
    rank: SummaryRank,
    /// The site digest it was last checked against (no need to check again until it changes).
    checked_at: Option<StateHash>,
    /// Endorsed by this node, or an endorsement of it reached this node.
    done: bool,
}

/// This node's own proposal, and who it asked to endorse it.
struct Own {
    bundle: Arc<Bundle>,
    asked: BTreeSet<NodeId>,
    asked_at: Option<Millis>,
    /// Rounds of every connected member asked without an endorsement: each doubles the wait
    /// before the next ask (up to 16 periods), so a proposal no one can endorse costs little.
    rounds: u32,
}

/// The proposals of this node's site it holds.
#[derive(Default)]
pub(crate) struct Proposals {
    held: BTreeMap<NodeId, Held>,
    own: Option<Own>,
}

/// What [`Proposals::tick`] asks the node to do.
#[derive(Default)]
pub(crate) struct Due {
    /// Proposals this node's records support: to endorse.
    pub(crate) endorse: Vec<Arc<Bundle>>,
    /// Its own proposal, to hand to this site peer.
    pub(crate) ask: Option<(PeerId, Arc<Bundle>)>,
}

impl Proposals {
    /// This node's own new proposal (it replaces the one before).
    pub(crate) fn propose(&mut self, bundle: Arc<Bundle>) {
        self.own = Some(Own { bundle, asked: BTreeSet::new(), asked_at: None, rounds: 0 });
    }

    /// Holds a verified proposal its author handed to this node. Returns whether it is new.
    pub(crate) fn offer(&mut self, held: &HeldSummary, site: &SiteState) -> bool {
        let author = held.summary().author;
        let rank = held.rank();
        if self.held.get(&author).is_some_and(|p| p.rank >= rank) {
            return false;
        }
        let score = |n: &NodeId| site::reporter_score(site.site(), n);
        if !self.held.contains_key(&author) && self.held.len() >= PROPOSALS_MAX {
            // Full: the author the election ranks last makes room, if it ranks after this one.
            let last = *self.held.keys().max_by_key(|n| score(n)).expect("full");
            if score(&last) < score(&author) {
                return false;
            }
            self.held.remove(&last);
        }
        let p = Held { bundle: held.bundle.clone(), rank, checked_at: None, done: false };
        self.held.insert(author, p);
        true
    }

    /// What is due at `now`. `circulating` is the endorsed summary of the site this node holds
    /// (its rank, and the body hash of the summary inside), which settles the proposals it
    /// endorses; `site_peers` are the members of the site this node is connected to.
    pub(crate) fn tick(
        &mut self,
        site: &mut SiteState,
        circulating: Option<(SummaryRank, [u8; 32])>,
        site_peers: &[(PeerId, NodeId)],
        quiet_ms: u64,
        now: Millis,
    ) -> Due {
        let mut due = Due::default();
        let endorsed =
            |b: &Bundle| circulating.is_some_and(|(_, h)| b.summary_body_hash() == Some(h));
        // A proposal older than the endorsed summary in circulation is of no more use.
        let stale = |r: &SummaryRank| circulating.is_some_and(|(c, _)| (r.1, r.2) < (c.1, c.2));
        self.held.retain(|_, p| !stale(&p.rank));
        if let Some(own) = &mut self.own {
            let rank = own.bundle.summary().map(|s| s.rank(false, [0; 32]));
            if endorsed(&own.bundle) || rank.is_some_and(|r| stale(&r)) {
                self.own = None;
            } else if own.asked_at.is_none_or(|at| now.since(at) >= quiet_ms << own.rounds.min(4)) {
                let score = |n: &NodeId| site::reporter_score(site.site(), n);
                let mut order: Vec<&(PeerId, NodeId)> = site_peers.iter().collect();
                order.sort_by_cached_key(|(_, n)| score(n));
                if order.iter().all(|(_, n)| own.asked.contains(n)) {
                    // Every connected member was asked: go round again, more slowly.
                    own.asked.clear();
                    own.rounds += 1;
                }
                if let Some((peer, node)) = order.into_iter().find(|(_, n)| !own.asked.contains(n))
                {
                    own.asked.insert(*node);
                    own.asked_at = Some(now);
                    due.ask = Some((*peer, own.bundle.clone()));
                }
            }
        }
        let digest = if self.held.values().any(|p| !p.done) { Some(site.digest()) } else { None };
        for p in self.held.values_mut().filter(|p| !p.done) {
            if endorsed(&p.bundle) {
                p.done = true;
                continue;
            }
            if p.checked_at == digest {
                continue;
            }
            p.checked_at = digest;
            let summary = p.bundle.summary().expect("held proposals are verified");
            if site.supports(summary).is_ok() {
                p.done = true;
                due.endorse.push(p.bundle.clone());
            }
        }
        due
    }

    /// Whether anything still waits (the node then ticks when its records change).
    pub(crate) fn waiting(&self) -> bool {
        self.own.is_some() || self.held.values().any(|p| !p.done)
    }
}
