//! The replicated state a node holds, and anti-entropy repair over it.
//!
//! Every `anti_entropy_interval_ms` (jittered) a node sends a [`Message::Digest`] to one random
//! admitted peer, and to each peer once on connect. Each part of a digest that differs starts a
//! repair exchange: automerge sync for the catalog, the admin chain for a peer behind, key lists
//! for site objects (same site only), rank lists for summaries, and the alarms themselves
//! (they are few and small). The functions here only answer: what to send back. What arrives
//! in reply is judged like any other object, by the router.

use crate::catalog::Catalog;
use crate::ids::{ObjectId, SiteId, StateHash};
use crate::limits;
use crate::rollout::alarms::Alarms;
use crate::site::{SiteKey, SiteState, Summaries};
use crate::trust::Trust;
use crate::wire::{Message, Rank};
use std::sync::Arc;

/// Trust, catalog, site state, summaries and alarms: what nodes replicate.
pub(crate) struct Replicas {
    pub(crate) trust: Trust,
    pub(crate) catalog: Catalog,
    pub(crate) site: SiteState,
    pub(crate) summaries: Summaries,
    pub(crate) alarms: Alarms,
}

/// A peer's digest.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Digest {
    pub(crate) catalog: StateHash,
    pub(crate) site: StateHash,
    pub(crate) summaries: StateHash,
    pub(crate) alarms: StateHash,
    pub(crate) trust_version: u64,
}

impl Replicas {
    /// This node's digest.
    pub(crate) fn digest(&mut self) -> Arc<Message> {
        Arc::new(Message::Digest {
            catalog: self.catalog.state_hash(),
            site: self.site.digest(),
            summaries: self.summaries.digest(),
            alarms: self.alarms.digest(),
            trust_version: self.trust.version(),
        })
    }

    /// What to send a peer whose digest is `theirs` (`same_site`: the peer is in our site),
    /// except the catalog sync, which needs the per-peer sync state: `true` in the second
    /// value when the catalogs differ.
    pub(crate) fn answer_digest(
        &mut self,
        theirs: Digest,
        same_site: bool,
    ) -> (Vec<Arc<Message>>, bool) {
        let mut out = Vec::new();
        if theirs.alarms != self.alarms.digest() {
            let bundles = self.alarms.bundles_except(&[], limits::OBJECTS_PER_SYNC_MAX);
            out.push(Arc::new(Message::Alarms { bundles, reply: true }));
        }
        if theirs.trust_version < self.trust.version() {
            out.push(Arc::new(Message::AdminSets(self.trust.chain().to_vec())));
        }
        let catalog_differs = theirs.catalog != self.catalog.state_hash();
        if same_site && theirs.site != self.site.digest() {
            out.push(Arc::new(Message::SiteKeys { keys: self.site.keys(), reply: true }));
        }
        if theirs.summaries != self.summaries.digest() {
            out.push(Arc::new(Message::SummaryRanks {
                ranks: self.summaries.ranks(),
                reply: true,
            }));
        }
        (out, catalog_differs)
    }

    /// A same-site peer's site object keys: the objects it lacks, and our keys if it holds
    /// some we lack and asked for a reply.
    pub(crate) fn answer_site_keys(&self, keys: &[SiteKey], reply: bool) -> Vec<Arc<Message>> {
        let mut theirs = keys.to_vec();
        theirs.sort_unstable();
        theirs.dedup();
        let mut out = Vec::new();
        let missing = self.site.missing_from(&theirs, limits::OBJECTS_PER_SYNC_MAX);
        if !missing.is_empty() {
            out.push(Arc::new(Message::SiteObjects(missing)));
        }
        let mine = self.site.keys();
        if reply && theirs.iter().any(|k| mine.binary_search(k).is_err()) {
            out.push(Arc::new(Message::SiteKeys { keys: mine, reply: false }));
        }
        out
    }

    /// A peer's summary ranks: the summaries newer here, and our ranks if it holds newer ones
    /// and asked for a reply.
    pub(crate) fn answer_summary_ranks(
        &self,
        ranks: &[(SiteId, Rank)],
        reply: bool,
    ) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        let newer = self.summaries.newer_than(ranks, limits::OBJECTS_PER_SYNC_MAX);
        if !newer.is_empty() {
            out.push(Arc::new(Message::Summaries(newer)));
        }
        // Looked up, not searched: at a few hundred sites a search per entry was most of an
        // exchange.
        let theirs_newer =
            || ranks.iter().any(|(s, r)| self.summaries.rank_of(s).is_none_or(|mine| mine < *r));
        if reply && theirs_newer() {
            let ranks = self.summaries.ranks();
            out.push(Arc::new(Message::SummaryRanks { ranks, reply: false }));
        }
        out
    }

    /// The alarms a peer that sent `theirs` lacks (an anti-entropy exchange).
    pub(crate) fn alarms_missing_from(&self, theirs: &[ObjectId]) -> Option<Arc<Message>> {
        let mut theirs = theirs.to_vec();
        theirs.sort_unstable();
        let missing = self.alarms.bundles_except(&theirs, limits::OBJECTS_PER_SYNC_MAX);
        (!missing.is_empty()).then(|| Arc::new(Message::Alarms { bundles: missing, reply: false }))
    }
}
