//! Endorsing this site's summaries (see "Endorsed summaries" in [`crate::site`]).
//!
//! The reporter's summary of a site of several members is a *proposal*: it travels with the
//! site's records, to the site's members only, and counts nowhere. Every member that holds it
//! checks it against its own records when they change ([`SiteState::supports`]: it claims
//! nothing those records do not show); the members after the author in the
//! reporter election's order endorse it, one at a time: the first as soon as its records agree,
//! the next one anti-entropy period later if no endorsement has reached it by then, and so on
//! (so a deputy that is down does not stall the site, and the usual case costs one
//! endorsement). The endorsed summary then travels like any summary. A proposal the records
//! never agree with (a lying author, or one whose records moved on) is never endorsed; the
//! reporter proposes again when its records change, and sends an unendorsed proposal of its own
//! again every summary interval in case the first copy was lost.

use crate::ids::{Millis, NodeId, StateHash};
use crate::site::{self, Bundle, HeldSummary, SiteState, SummaryRank};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Proposals held at once, by distinct authors: a member that floods proposals only ever
/// replaces its own, and the authors the election ranks first are kept.
pub(crate) const PROPOSALS_MAX: usize = 4;

/// One proposal as held.
struct Proposal {
    bundle: Arc<Bundle>,
    rank: SummaryRank,
    /// When this node first held it.
    since: Millis,
    /// When it was last sent to the site's members (its author's own only).
    sent_at: Millis,
    /// The site digest it was last checked against: the members ahead of this node in the
    /// election order then, and whether this node's records agreed with it.
    checked: Option<(StateHash, u64, bool)>,
    /// Endorsed (by this node, or another endorsement reached it): nothing more to do.
    done: bool,
}

/// The proposals of this node's site it holds.
#[derive(Default)]
pub(crate) struct Proposals {
    held: BTreeMap<NodeId, Proposal>,
}

/// What [`Proposals::tick`] asks the node to do.
#[derive(Default)]
pub(crate) struct Due {
    /// Proposals this node's records agree with and it is now its turn to endorse.
    pub(crate) endorse: Vec<Arc<Bundle>>,
    /// Its own unendorsed proposal, to send to the site's members again.
    pub(crate) resend: Option<Arc<Bundle>>,
}

impl Proposals {
    /// Holds a verified proposal of this site. Returns whether it is new (to pass on).
    pub(crate) fn offer(&mut self, held: &HeldSummary, site: &SiteState, now: Millis) -> bool {
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
        let p = Proposal {
            bundle: held.bundle.clone(),
            rank,
            since: now,
            sent_at: now,
            checked: None,
            done: false,
        };
        self.held.insert(author, p);
        true
    }

    /// What is due at `now` for node `me`: endorsements (the summary held for the site, whose
    /// summary body hash is `circulating`, marks the proposals it endorses as done) and the
    /// re-send of its own proposal.
    pub(crate) fn tick(
        &mut self,
        me: NodeId,
        site: &mut SiteState,
        circulating: Option<(SummaryRank, [u8; 32])>,
        quiet_ms: u64,
        resend_ms: u64,
        now: Millis,
    ) -> Due {
        let mut due = Due::default();
        // A proposal older than the endorsed summary in circulation is of no more use.
        if let Some((rank, _)) = circulating {
            self.held.retain(|_, p| (p.rank.1, p.rank.2) >= (rank.1, rank.2));
        }
        if self.held.is_empty() {
            return due;
        }
        let digest = site.digest();
        let my_score = site::reporter_score(site.site(), &me);
        for (author, p) in self.held.iter_mut() {
            let hash = p.bundle.summary_body_hash();
            if circulating.is_some_and(|(_, h)| Some(h) == hash) {
                p.done = true;
            }
            if p.done {
                continue;
            }
            if *author == me {
                if now.since(p.sent_at) >= resend_ms {
                    p.sent_at = now;
                    due.resend = Some(p.bundle.clone());
                }
                continue;
            }
            let (ahead, agrees) = match p.checked {
                Some((at, ahead, agrees)) if at == digest => (ahead, agrees),
                _ => {
                    // Members ahead of this node in the election order (the author aside).
                    let ahead = site
                        .records()
                        .keys()
                        .filter(|n| *n != author && **n != me)
                        .filter(|n| site::reporter_score(site.site(), n) < my_score)
                        .count() as u64;
                    let summary = p.bundle.summary().expect("held proposals are verified");
                    let agrees = site.supports(summary).is_ok();
                    p.checked = Some((digest, ahead, agrees));
                    (ahead, agrees)
                }
            };
            // This node's turn: one anti-entropy period per member ahead of it.
            if agrees && now.since(p.since) >= ahead.saturating_mul(quiet_ms) {
                p.done = true;
                due.endorse.push(p.bundle.clone());
            }
        }
        due
    }

    /// Whether any proposal still waits (the node then ticks it when its records change).
    pub(crate) fn waiting(&self) -> bool {
        self.held.values().any(|p| !p.done)
    }
}
