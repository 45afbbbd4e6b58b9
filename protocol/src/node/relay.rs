//! Spreading fresh objects: at once, or batched and flushed.
//!
//! New objects are pushed to every admitted peer that should hold them (catalog changes,
//! admin sets and alarms to all peers, site objects to peers of the same site, summaries to
//! every peer in another site and a random few of this site's), except the peer they came
//! from; a node relays only what it verified and kept as new. Site objects and summaries are batched for `gossip_flush_ms`, so a burst of many
//! small objects costs one message per peer rather than one per object.
//!
//! With [`RelayMode::Direct`] (the simulator) the node pushes every relay itself, one
//! [`Output::Send`] per peer. With [`RelayMode::Topics`] (the real node, over gossipsub) it
//! emits one [`Output::Broadcast`] per fresh object it originated or repaired, on a [`Topic`];
//! objects that arrived by pubsub ([`Via::Gossip`]) are not re-sent: the driver's pubsub
//! forwards them once the node answers with [`Output::GossipVerdict`] `Accept`.

use super::peers::Peers;
use super::{Output, PeerId, RelayMode, Topic};
use crate::ids::SiteId;
use crate::limits;
use crate::site::Bundle;
use crate::wire::Message;
use rand::Rng;
use std::collections::VecDeque;
use std::sync::Arc;

/// How an object reached this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// Made, submitted or restored here.
    Local,
    /// From a peer over a direct stream (anti-entropy, or a push in [`RelayMode::Direct`]).
    Direct(PeerId),
    /// From a peer's pubsub forward.
    Gossip(PeerId),
}

impl Via {
    /// The peer it came from, if any.
    pub(crate) fn peer(self) -> Option<PeerId> {
        match self {
            Via::Local => None,
            Via::Direct(p) | Via::Gossip(p) => Some(p),
        }
    }
}

/// The queue of outputs for the driver, bounded by [`limits::OUTPUT_QUEUE_MAX`].
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Output>,
    /// Outputs dropped because the driver did not drain the queue.
    pub(crate) dropped: u64,
}

impl Outbox {
    /// Queues `out`, or counts it dropped when the queue is full.
    pub(crate) fn push(&mut self, out: Output) {
        if self.queue.len() >= limits::OUTPUT_QUEUE_MAX {
            self.dropped += 1;
            return;
        }
        self.queue.push_back(out);
    }

    /// Queues a message to one peer.
    pub(crate) fn send(&mut self, peer: PeerId, msg: Arc<Message>) {
        self.push(Output::Send { peer, msg });
    }

    /// The next output.
    pub(crate) fn pop(&mut self) -> Option<Output> {
        self.queue.pop_front()
    }

    /// Forgets everything queued (and its capacity).
    pub(crate) fn clear(&mut self) {
        self.queue = VecDeque::new();
    }
}

/// Which batch a queued object goes out with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Batch {
    /// Records and evidence: same-site peers.
    SiteObjects,
    /// Summaries: a few random peers (or the summaries topic).
    Summaries,
}

/// The relay policy and the batches waiting for the next flush.
#[derive(Debug)]
pub(crate) struct Relay {
    mode: RelayMode,
    summary_fanout: usize,
    site_objects: Vec<(Arc<Bundle>, Option<PeerId>)>,
    summaries: Vec<(Arc<Bundle>, Option<PeerId>)>,
}

impl Relay {
    /// A relay in `mode` that pushes summaries to `summary_fanout` peers.
    pub(crate) fn new(mode: RelayMode, summary_fanout: usize) -> Relay {
        Relay { mode, summary_fanout, site_objects: Vec::new(), summaries: Vec::new() }
    }

    /// Spreads `msg` (an admin chain, a catalog change, alarms: things every node holds) at
    /// once.
    pub(crate) fn spread(&self, via: Via, msg: Arc<Message>, peers: &Peers, out: &mut Outbox) {
        if self.mode == RelayMode::Topics {
            // Pubsub forwards what came by pubsub; the rest is published once.
            if !matches!(via, Via::Gossip(_)) {
                out.push(Output::Broadcast { topic: Topic::Control, msg });
            }
            return;
        }
        for (p, _) in peers.admitted_local() {
            if Some(p) != via.peer() {
                out.send(p, msg.clone());
            }
        }
    }

    /// Queues `bundle` for the next flush. Returns whether anything waits to be flushed (so
    /// the caller arms the flush timer); an object that pubsub forwards itself is not queued.
    pub(crate) fn queue(&mut self, via: Via, bundle: Arc<Bundle>, batch: Batch) -> bool {
        if !(matches!(via, Via::Gossip(_)) && self.mode == RelayMode::Topics) {
            let queue = match batch {
                Batch::SiteObjects => &mut self.site_objects,
                Batch::Summaries => &mut self.summaries,
            };
            if queue.len() < limits::OBJECTS_PER_SYNC_MAX * 4 {
                queue.push((bundle, via.peer()));
            }
        }
        !(self.site_objects.is_empty() && self.summaries.is_empty())
    }

    /// Forgets the batches (after a restore, which queued everything it read).
    pub(crate) fn clear(&mut self) {
        self.site_objects = Vec::new();
        self.summaries = Vec::new();
    }

    /// Sends each peer one batch of the fresh objects it did not send us.
    pub(crate) fn flush(
        &mut self,
        site: &SiteId,
        peers: &Peers,
        rng: &mut impl Rng,
        out: &mut Outbox,
    ) {
        let site_objects = std::mem::take(&mut self.site_objects);
        let summaries = std::mem::take(&mut self.summaries);
        if self.mode == RelayMode::Topics {
            let batch = |items: Vec<(Arc<Bundle>, Option<PeerId>)>| -> Vec<Arc<Bundle>> {
                items.into_iter().map(|(b, _)| b).take(limits::OBJECTS_PER_SYNC_MAX).collect()
            };
            let site_batch = batch(site_objects);
            if !site_batch.is_empty() {
                let msg = Arc::new(Message::SiteObjects(site_batch));
                out.push(Output::Broadcast { topic: Topic::Site(site.clone()), msg });
            }
            let summary_batch = batch(summaries);
            if !summary_batch.is_empty() {
                let msg = Arc::new(Message::Summaries(summary_batch));
                out.push(Output::Broadcast { topic: Topic::Summaries, msg });
            }
            return;
        }
        let targets = peers.admitted_local();
        // Summaries go to every peer in another site (they are what other sites read, and a
        // site's few WAN links are the only way there) and to a random few of this site's
        // peers, drawn from the node's own RNG.
        let mut summary_targets: Vec<PeerId> =
            targets.iter().filter(|(_, same)| *same).map(|(p, _)| *p).collect();
        for i in (1..summary_targets.len()).rev() {
            summary_targets.swap(i, rng.gen_range(0..=i));
        }
        summary_targets.truncate(self.summary_fanout);
        for (peer, same_site) in targets {
            let pick = |items: &[(Arc<Bundle>, Option<PeerId>)]| -> Vec<Arc<Bundle>> {
                items
                    .iter()
                    .filter(|(_, from)| *from != Some(peer))
                    .map(|(b, _)| b.clone())
                    .take(limits::OBJECTS_PER_SYNC_MAX)
                    .collect()
            };
            if same_site {
                let batch = pick(&site_objects);
                if !batch.is_empty() {
                    out.send(peer, Arc::new(Message::SiteObjects(batch)));
                }
            }
            let batch = if !same_site || summary_targets.contains(&peer) {
                pick(&summaries)
            } else {
                Vec::new()
            };
            if !batch.is_empty() {
                out.send(peer, Arc::new(Message::Summaries(batch)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    fn msg() -> Arc<Message> {
        Arc::new(Message::AdminSets(vec![]))
    }

    #[test]
    fn topics_mode_publishes_once_and_never_echoes_pubsub() {
        let relay = Relay::new(RelayMode::Topics, 3);
        let peers = Peers::default();
        let mut out = Outbox::default();
        relay.spread(Via::Gossip(PeerId(1)), msg(), &peers, &mut out);
        assert!(out.pop().is_none(), "pubsub forwards what came by pubsub");
        relay.spread(Via::Direct(PeerId(1)), msg(), &peers, &mut out);
        assert!(matches!(out.pop(), Some(Output::Broadcast { topic: Topic::Control, .. })));
        assert!(out.pop().is_none());
    }

    #[test]
    fn direct_mode_skips_the_sender_and_unadmitted_peers() {
        let relay = Relay::new(RelayMode::Direct, 3);
        let mut peers = Peers::default();
        peers.connect(PeerId(1), NodeId([1; 32]), crate::ids::Millis(0));
        let mut out = Outbox::default();
        relay.spread(Via::Local, msg(), &peers, &mut out);
        assert!(out.pop().is_none(), "a peer with no certificate gets nothing");
    }

    #[test]
    fn the_outbox_is_bounded_and_counts_what_it_drops() {
        let mut out = Outbox::default();
        for _ in 0..limits::OUTPUT_QUEUE_MAX + 3 {
            out.send(PeerId(1), msg());
        }
        assert_eq!(out.dropped, 3);
        out.clear();
        assert!(out.pop().is_none());
    }
}
